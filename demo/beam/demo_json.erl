%% Tiny JSON codec (OTP 25 has no json module).
%% Encoding: maps (atom/binary/list keys), lists -> arrays, binaries -> strings,
%% integers, floats, true/false/null, other atoms -> strings, {string, Chars} -> string.
%% Decoding: objects -> maps with binary keys, arrays -> lists, strings -> binaries.
-module(demo_json).
-export([encode/1, decode/1]).

encode(null) -> <<"null">>;
encode(true) -> <<"true">>;
encode(false) -> <<"false">>;
encode(undefined) -> <<"null">>;
encode(A) when is_atom(A) -> str(atom_to_binary(A, utf8));
encode(I) when is_integer(I) -> integer_to_binary(I);
encode(F) when is_float(F) -> float_to_binary(F, [short]);
encode(B) when is_binary(B) -> str(B);
encode({raw, Json}) -> Json;
encode({string, L}) -> str(unicode:characters_to_binary(L));
encode(M) when is_map(M) ->
    Pairs = [[str(key(K)), $:, encode(V)] || {K, V} <- lists:sort(maps:to_list(M))],
    iolist_to_binary([${, join(Pairs), $}]);
encode({obj, L}) ->
    %% ordered object: [{Key, Value}]
    Pairs = [[str(key(K)), $:, encode(V)] || {K, V} <- L],
    iolist_to_binary([${, join(Pairs), $}]);
encode(L) when is_list(L) ->
    iolist_to_binary([$[, join([encode(E) || E <- L]), $]]).

key(K) when is_atom(K) -> atom_to_binary(K, utf8);
key(K) when is_binary(K) -> K;
key(K) when is_list(K) -> unicode:characters_to_binary(K);
key(K) when is_integer(K) -> integer_to_binary(K).

join([]) -> [];
join([H | T]) -> [H | [[$, | E] || E <- T]].

str(B) -> [$", esc(B, <<>>), $"].

esc(<<>>, Acc) -> Acc;
esc(<<$", R/binary>>, Acc) -> esc(R, <<Acc/binary, $\\, $">>);
esc(<<$\\, R/binary>>, Acc) -> esc(R, <<Acc/binary, $\\, $\\>>);
esc(<<$\n, R/binary>>, Acc) -> esc(R, <<Acc/binary, $\\, $n>>);
esc(<<$\r, R/binary>>, Acc) -> esc(R, <<Acc/binary, $\\, $r>>);
esc(<<$\t, R/binary>>, Acc) -> esc(R, <<Acc/binary, $\\, $t>>);
esc(<<C, R/binary>>, Acc) when C < 16#20 ->
    H = list_to_binary(io_lib:format("\\u~4.16.0b", [C])),
    esc(R, <<Acc/binary, H/binary>>);
esc(<<C, R/binary>>, Acc) -> esc(R, <<Acc/binary, C>>).

%% ---- decoding ----
decode(Bin) when is_binary(Bin) ->
    try
        {V, Rest} = value(ws(Bin)),
        case ws(Rest) of
            <<>> -> {ok, V};
            _ -> {error, trailing_data}
        end
    catch _:_ -> {error, invalid_json}
    end.

ws(<<C, R/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> ws(R);
ws(B) -> B.

value(<<${, R/binary>>) -> object(ws(R), #{});
value(<<$[, R/binary>>) -> array(ws(R), []);
value(<<$", R/binary>>) -> string(R, <<>>);
value(<<"true", R/binary>>) -> {true, R};
value(<<"false", R/binary>>) -> {false, R};
value(<<"null", R/binary>>) -> {null, R};
value(B) -> number(B).

object(<<$}, R/binary>>, M) -> {M, R};
object(<<$", R/binary>>, M) ->
    {K, R1} = string(R, <<>>),
    <<$:, R2/binary>> = ws(R1),
    {V, R3} = value(ws(R2)),
    M1 = M#{K => V},
    case ws(R3) of
        <<$,, R4/binary>> -> object(ws(R4), M1);
        <<$}, R4/binary>> -> {M1, R4}
    end.

array(<<$], R/binary>>, Acc) -> {lists:reverse(Acc), R};
array(B, Acc) ->
    {V, R1} = value(B),
    case ws(R1) of
        <<$,, R2/binary>> -> array(ws(R2), [V | Acc]);
        <<$], R2/binary>> -> {lists:reverse([V | Acc]), R2}
    end.

string(<<$", R/binary>>, Acc) -> {Acc, R};
string(<<$\\, C, R/binary>>, Acc) ->
    case C of
        $" -> string(R, <<Acc/binary, $">>);
        $\\ -> string(R, <<Acc/binary, $\\>>);
        $/ -> string(R, <<Acc/binary, $/>>);
        $b -> string(R, <<Acc/binary, 8>>);
        $f -> string(R, <<Acc/binary, 12>>);
        $n -> string(R, <<Acc/binary, $\n>>);
        $r -> string(R, <<Acc/binary, $\r>>);
        $t -> string(R, <<Acc/binary, $\t>>);
        $u ->
            <<H:4/binary, R1/binary>> = R,
            Cp = binary_to_integer(H, 16),
            case Cp >= 16#D800 andalso Cp =< 16#DBFF of
                true ->
                    <<"\\u", L:4/binary, R2/binary>> = R1,
                    Lo = binary_to_integer(L, 16),
                    Full = 16#10000 + ((Cp - 16#D800) bsl 10) + (Lo - 16#DC00),
                    string(R2, <<Acc/binary, Full/utf8>>);
                false ->
                    string(R1, <<Acc/binary, Cp/utf8>>)
            end
    end;
string(<<C, R/binary>>, Acc) -> string(R, <<Acc/binary, C>>).

number(B) ->
    {Txt, R} = numchars(B, <<>>),
    V = case binary:match(Txt, [<<".">>, <<"e">>, <<"E">>]) of
            nomatch -> binary_to_integer(Txt);
            _ -> to_float(Txt)
        end,
    {V, R}.

to_float(Txt) ->
    %% Erlang needs digits on both sides of the dot: "1e5" -> "1.0e5"
    T1 = case binary:match(Txt, <<".">>) of
             nomatch -> re:replace(Txt, "[eE]", ".0e", [{return, binary}]);
             _ -> Txt
         end,
    binary_to_float(T1).

numchars(<<C, R/binary>>, Acc) when (C >= $0 andalso C =< $9); C =:= $-; C =:= $+;
                                    C =:= $.; C =:= $e; C =:= $E ->
    numchars(R, <<Acc/binary, C>>);
numchars(R, Acc) when Acc =/= <<>> -> {Acc, R}.
