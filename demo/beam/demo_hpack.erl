%% HPACK (RFC 7541): Huffman coding, static + dynamic tables, integer and string
%% literals, table size updates. The encoder behaves like cowlib's: every header not
%% fully indexed yet is sent as a literal with incremental indexing, strings are
%% Huffman-coded unless that is longer.
-module(demo_hpack).
-export([new/0, new/1, decode/2, encode/2, set_max_size/2,
         huffman_encode/1, huffman_decode/1, enc_int/3, dec_int/2, table/1]).

-record(tbl, {entries = [] :: [{binary(), binary()}],  %% newest first
              size = 0 :: non_neg_integer(),
              max = 4096 :: non_neg_integer(),
              pending_update = none}).

new() -> new(4096).
new(Max) -> #tbl{max = Max}.

table(#tbl{entries = E, size = S, max = M}) -> {E, S, M}.

%% Encoder side: the peer lowered/raised SETTINGS_HEADER_TABLE_SIZE.
set_max_size(T = #tbl{max = M}, M) -> T;
set_max_size(T, New) ->
    T1 = evict(T#tbl{max = New}),
    T1#tbl{pending_update = New}.

%% ---------------- Huffman (RFC 7541 Appendix B) ----------------
%% Code lengths of symbols 0..256 (256 = EOS). The code is canonical: codes are
%% assigned in order of (length, symbol), which reproduces the RFC's table.
lengths() ->
    [13,23,28,28,28,28,28,28,28,24,30,28,28,30,28,28,28,28,28,28,28,28,30,28,28,28,28,28,28,28,28,28,
     6,10,10,12,13,6,8,11,10,10,8,11,8,6,6,6,5,5,5,6,6,6,6,6,6,6,7,8,15,6,12,10,
     13,6,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,8,7,8,13,19,13,14,6,
     15,5,6,5,6,5,6,6,6,5,7,7,6,6,6,5,6,7,6,5,5,6,7,7,7,7,7,15,11,14,13,28,
     20,22,20,20,22,22,22,23,22,23,23,23,23,23,24,23,24,24,22,23,24,23,23,23,23,21,22,23,22,23,23,24,
     22,21,20,22,22,23,23,21,23,22,22,24,21,22,23,23,21,21,22,21,23,22,23,23,20,22,22,22,23,22,22,23,
     26,26,20,19,22,23,22,25,26,26,26,27,27,26,24,25,19,21,26,27,27,26,27,24,21,21,26,26,28,27,27,27,
     20,24,20,21,22,21,21,23,22,22,25,25,24,24,26,23,26,27,26,26,27,27,27,27,27,28,27,27,27,27,27,26,
     30].

codes() ->
    case persistent_term:get({?MODULE, codes}, undefined) of
        undefined ->
            Lens = lists:zip(lists:seq(0, 256), lengths()),
            Sorted = lists:sort(fun({S1, L1}, {S2, L2}) -> {L1, S1} =< {L2, S2} end, Lens),
            Assigned = assign(Sorted, 0, 0, []),
            Enc = list_to_tuple([C || {_S, C} <- lists:sort([{S, {Code, L}} || {S, Code, L} <- Assigned])]),
            Dec = maps:from_list([{{L, Code}, S} || {S, Code, L} <- Assigned]),
            persistent_term:put({?MODULE, codes}, {Enc, Dec}),
            {Enc, Dec};
        V -> V
    end.

assign([], _, _, Acc) -> Acc;
assign([{S, L} | T], Code, PrevLen, Acc) ->
    C = Code bsl (L - PrevLen),
    assign(T, C + 1, L, [{S, C, L} | Acc]).

huffman_encode(Bin) ->
    {Enc, _} = codes(),
    Bits = << <<(element(1, element(C + 1, Enc))):(element(2, element(C + 1, Enc)))>> || <<C>> <= Bin >>,
    Pad = (8 - bit_size(Bits) rem 8) rem 8,
    <<Bits/bitstring, ((1 bsl Pad) - 1):Pad>>.

huffman_decode(Bin) ->
    {_, Dec} = codes(),
    hdec(Bin, Dec, 0, 0, <<>>).

hdec(<<>>, _Dec, Code, Len, Acc) ->
    %% padding: fewer than 8 bits, all ones
    case Len < 8 andalso Code =:= (1 bsl Len) - 1 of
        true -> {ok, Acc};
        false -> {error, bad_huffman_padding}
    end;
hdec(<<B:1, R/bitstring>>, Dec, Code, Len, Acc) ->
    C = (Code bsl 1) bor B,
    L = Len + 1,
    case L >= 5 andalso maps:find({L, C}, Dec) of
        {ok, 256} -> {error, eos_in_string};
        {ok, S} -> hdec(R, Dec, 0, 0, <<Acc/binary, S>>);
        _ when L > 30 -> {error, bad_huffman_code};
        _ -> hdec(R, Dec, C, L, Acc)
    end.

%% ---------------- integers and strings ----------------
%% enc_int(Value, PrefixBits, HighBits) where HighBits are the flag bits above the prefix
enc_int(I, N, High) ->
    Max = (1 bsl N) - 1,
    case I < Max of
        true -> <<High:(8 - N), I:N>>;
        false -> <<High:(8 - N), Max:N, (enc_int_rest(I - Max))/binary>>
    end.

enc_int_rest(I) when I < 128 -> <<I>>;
enc_int_rest(I) -> <<1:1, (I band 127):7, (enc_int_rest(I bsr 7))/binary>>.

%% dec_int(Bin, PrefixBits) with the flag bits of the first byte already consumed:
%% Bin starts with the N-bit prefix.
dec_int(Bin, N) ->
    <<P:N, R/binary>> = Bin,
    Max = (1 bsl N) - 1,
    case P < Max of
        true -> {P, R};
        false -> dec_int_rest(R, 0, Max)
    end.

dec_int_rest(<<1:1, V:7, R/binary>>, Shift, Acc) -> dec_int_rest(R, Shift + 7, Acc + (V bsl Shift));
dec_int_rest(<<0:1, V:7, R/binary>>, Shift, Acc) -> {Acc + (V bsl Shift), R}.

enc_str(S) ->
    H = huffman_encode(S),
    %% Huffman unless it is longer (the RFC's examples pick it on a tie too)
    case byte_size(H) =< byte_size(S) of
        true -> [enc_int(byte_size(H), 7, 1), H];
        false -> [enc_int(byte_size(S), 7, 0), S]
    end.

dec_str(<<HFlag:1, R/bitstring>>) ->
    {Len, R1} = dec_int(R, 7),
    <<S:Len/binary, R2/binary>> = R1,
    case HFlag of
        0 -> {S, R2};
        1 -> {ok, D} = huffman_decode(S), {D, R2}
    end.

%% ---------------- tables ----------------
static() ->
    {{<<":authority">>, <<>>}, {<<":method">>, <<"GET">>}, {<<":method">>, <<"POST">>},
     {<<":path">>, <<"/">>}, {<<":path">>, <<"/index.html">>}, {<<":scheme">>, <<"http">>},
     {<<":scheme">>, <<"https">>}, {<<":status">>, <<"200">>}, {<<":status">>, <<"204">>},
     {<<":status">>, <<"206">>}, {<<":status">>, <<"304">>}, {<<":status">>, <<"400">>},
     {<<":status">>, <<"404">>}, {<<":status">>, <<"500">>}, {<<"accept-charset">>, <<>>},
     {<<"accept-encoding">>, <<"gzip, deflate">>}, {<<"accept-language">>, <<>>},
     {<<"accept-ranges">>, <<>>}, {<<"accept">>, <<>>}, {<<"access-control-allow-origin">>, <<>>},
     {<<"age">>, <<>>}, {<<"allow">>, <<>>}, {<<"authorization">>, <<>>},
     {<<"cache-control">>, <<>>}, {<<"content-disposition">>, <<>>},
     {<<"content-encoding">>, <<>>}, {<<"content-language">>, <<>>},
     {<<"content-length">>, <<>>}, {<<"content-location">>, <<>>},
     {<<"content-range">>, <<>>}, {<<"content-type">>, <<>>}, {<<"cookie">>, <<>>},
     {<<"date">>, <<>>}, {<<"etag">>, <<>>}, {<<"expect">>, <<>>}, {<<"expires">>, <<>>},
     {<<"from">>, <<>>}, {<<"host">>, <<>>}, {<<"if-match">>, <<>>},
     {<<"if-modified-since">>, <<>>}, {<<"if-none-match">>, <<>>}, {<<"if-range">>, <<>>},
     {<<"if-unmodified-since">>, <<>>}, {<<"last-modified">>, <<>>}, {<<"link">>, <<>>},
     {<<"location">>, <<>>}, {<<"max-forwards">>, <<>>}, {<<"proxy-authenticate">>, <<>>},
     {<<"proxy-authorization">>, <<>>}, {<<"range">>, <<>>}, {<<"referer">>, <<>>},
     {<<"refresh">>, <<>>}, {<<"retry-after">>, <<>>}, {<<"server">>, <<>>},
     {<<"set-cookie">>, <<>>}, {<<"strict-transport-security">>, <<>>},
     {<<"transfer-encoding">>, <<>>}, {<<"user-agent">>, <<>>}, {<<"vary">>, <<>>},
     {<<"via">>, <<>>}, {<<"www-authenticate">>, <<>>}}.

lookup(I, _T) when I >= 1, I =< 61 -> element(I, static());
lookup(I, #tbl{entries = E}) when I > 61, I - 61 =< length(E) -> lists:nth(I - 61, E);
lookup(I, _) -> throw({hpack_error, {bad_index, I}}).

entry_size({N, V}) -> byte_size(N) + byte_size(V) + 32.

add(H, T = #tbl{entries = E, size = S, max = M}) ->
    Sz = entry_size(H),
    case Sz > M of
        true -> T#tbl{entries = [], size = 0};
        false -> evict(T#tbl{entries = [H | E], size = S + Sz})
    end.

evict(T = #tbl{size = S, max = M}) when S =< M -> T;
evict(T = #tbl{entries = E, size = S}) ->
    Last = lists:last(E),
    evict(T#tbl{entries = lists:droplast(E), size = S - entry_size(Last)}).

%% ---------------- decoder ----------------
decode(Bin, T) ->
    try dec(Bin, T, []) of
        {Hs, T1} -> {ok, Hs, T1}
    catch
        throw:{hpack_error, R} -> {error, R};
        error:R -> {error, R}
    end.

dec(<<>>, T, Acc) -> {lists:reverse(Acc), T};
dec(<<1:1, R/bitstring>>, T, Acc) ->
    {I, R1} = dec_int(R, 7),
    dec(R1, T, [lookup(I, T) | Acc]);
dec(<<0:1, 1:1, R/bitstring>>, T, Acc) ->
    {H, R1} = dec_literal(R, 6, T),
    dec(R1, add(H, T), [H | Acc]);
dec(<<0:2, 1:1, R/bitstring>>, T, Acc) ->
    {Size, R1} = dec_int(R, 5),
    dec(R1, evict(T#tbl{max = Size}), Acc);
dec(<<0:3, _:1, R/bitstring>>, T, Acc) ->
    {H, R1} = dec_literal(R, 4, T),
    dec(R1, T, [H | Acc]).

dec_literal(R, N, T) ->
    {I, R1} = dec_int(R, N),
    {Name, R2} = case I of
                     0 -> dec_str(R1);
                     _ -> {element(1, lookup(I, T)), R1}
                 end,
    {Value, R3} = dec_str(R2),
    {{Name, Value}, R3}.

%% ---------------- encoder ----------------
encode(Headers, T0) ->
    {Prefix, T} = case T0#tbl.pending_update of
                      none -> {[], T0};
                      Sz -> {enc_int(Sz, 5, 1), T0#tbl{pending_update = none}}
                  end,
    {Io, T1} = lists:foldl(fun({N0, V0}, {Acc, Tb}) ->
                                   N = iolist_to_binary(N0), V = iolist_to_binary(V0),
                                   {Out, Tb1} = enc_header(N, V, Tb),
                                   {[Acc, Out], Tb1}
                           end, {Prefix, T}, Headers),
    {iolist_to_binary(Io), T1}.

enc_header(N, V, T) ->
    case find(N, V, T) of
        {full, I} -> {enc_int(I, 7, 1), T};
        {name, I} -> {[enc_int(I, 6, 1), enc_str(V)], add({N, V}, T)};
        none -> {[<<2#01000000>>, enc_str(N), enc_str(V)], add({N, V}, T)}
    end.

find(N, V, #tbl{entries = E}) ->
    All = tuple_to_list(static()) ++ E,
    find(All, 1, N, V, none).

find([], _, _, _, Best) -> Best;
find([{N, V} | _], I, N, V, _) -> {full, I};
find([{N, _} | R], I, N, V, none) -> find(R, I + 1, N, V, {name, I});
find([_ | R], I, N, V, Best) -> find(R, I + 1, N, V, Best).
