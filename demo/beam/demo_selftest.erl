%% Self-checks for the codecs: RFC 7541 Appendix C examples (HPACK, Huffman
%% included), JSON and protobuf round trips, HTTP/2 framing.
%% erl -noshell -pa demo/_build/ebin -s demo_selftest run -s init stop
-module(demo_selftest).
-export([run/0]).

run() ->
    Tests = [fun ints/0, fun c3/0, fun c4/0, fun c6/0, fun huffman_roundtrip/0,
             fun encoder_roundtrip/0, fun json/0, fun pb/0, fun frames/0],
    Results = [try T(), ok catch C:R:St -> {fail, T, C, R, St} end || T <- Tests],
    case [F || F = {fail, _, _, _, _} <- Results] of
        [] -> io:format("demo_selftest: ~p tests passed~n", [length(Tests)]);
        Fails ->
            [io:format(standard_error, "FAIL ~p: ~p:~p~n  ~p~n", [T, C, R, St]) || {fail, T, C, R, St} <- Fails],
            erlang:halt(1)
    end.

hex(S) -> binary:decode_hex(list_to_binary([C || C <- S, C =/= $\s])).

ints() ->
    <<10>> = demo_hpack:enc_int(10, 5, 0),
    <<16#1f, 16#9a, 16#0a>> = demo_hpack:enc_int(1337, 5, 0),
    <<42>> = demo_hpack:enc_int(42, 8, 0),
    {1337, <<>>} = demo_hpack:dec_int(<<31:5, 16#9a, 16#0a>>, 5),
    ok.

seq(Max, Steps) ->
    lists:foldl(fun({Hex, Expected, Size}, {D, E}) ->
                        Bin = hex(Hex),
                        {ok, Hs, D1} = demo_hpack:decode(Bin, D),
                        Exp = [{list_to_binary(N), list_to_binary(V)} || {N, V} <- Expected],
                        Exp = Hs,
                        {_, Size, _} = demo_hpack:table(D1),
                        {Enc, E1} = demo_hpack:encode(Exp, E),
                        case Enc =:= Bin of
                            true -> ok;
                            false -> error({encoder_mismatch, Hex, binary:encode_hex(Enc)})
                        end,
                        {D1, E1}
                end, {demo_hpack:new(Max), demo_hpack:new(Max)}, Steps),
    ok.

req1() -> [{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "www.example.com"}].
req2() -> req1() ++ [{"cache-control", "no-cache"}].
req3() -> [{":method", "GET"}, {":scheme", "https"}, {":path", "/index.html"},
           {":authority", "www.example.com"}, {"custom-key", "custom-value"}].

c3() ->
    %% decode only: plain literals (our encoder would Huffman-code them)
    lists:foldl(fun({Hex, Exp, Size}, D) ->
                        {ok, Hs, D1} = demo_hpack:decode(hex(Hex), D),
                        Hs = [{list_to_binary(N), list_to_binary(V)} || {N, V} <- Exp],
                        {_, Size, _} = demo_hpack:table(D1),
                        D1
                end, demo_hpack:new(),
                [{"8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", req1(), 57},
                 {"8286 84be 5808 6e6f 2d63 6163 6865", req2(), 110},
                 {"8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65", req3(), 164}]),
    ok.

c4() ->
    seq(4096, [{"8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", req1(), 57},
               {"8286 84be 5886 a8eb 1064 9cbf", req2(), 110},
               {"8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", req3(), 164}]).

c6() ->
    R1 = [{":status", "302"}, {"cache-control", "private"}, {"date", "Mon, 21 Oct 2013 20:13:21 GMT"},
          {"location", "https://www.example.com"}],
    R2 = [{":status", "307"}, {"cache-control", "private"}, {"date", "Mon, 21 Oct 2013 20:13:21 GMT"},
          {"location", "https://www.example.com"}],
    R3 = [{":status", "200"}, {"cache-control", "private"}, {"date", "Mon, 21 Oct 2013 20:13:22 GMT"},
          {"location", "https://www.example.com"}, {"content-encoding", "gzip"},
          {"set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"}],
    seq(256, [{"4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
               " 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3", R1, 222},
              {"4883 640e ffc1 c0bf", R2, 222},
              {"88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
               " 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
               " 9587 3160 65c0 03ed 4ee5 b106 3d50 07", R3, 215}]).

huffman_roundtrip() ->
    All = list_to_binary(lists:seq(0, 255)),
    {ok, All} = demo_hpack:huffman_decode(demo_hpack:huffman_encode(All)),
    [begin
         B = crypto_free_rand(N),
         {ok, B} = demo_hpack:huffman_decode(demo_hpack:huffman_encode(B))
     end || N <- lists:seq(0, 200)],
    %% EOS inside a string is an error; padding longer than 7 bits too
    {error, _} = demo_hpack:huffman_decode(<<16#ff, 16#ff, 16#ff, 16#ff>>),
    ok.

crypto_free_rand(N) -> list_to_binary([rand:uniform(256) - 1 || _ <- lists:seq(1, N)]).

encoder_roundtrip() ->
    %% unique correlation ids force eviction in a 4096-byte table
    {_, _} = lists:foldl(
               fun(I, {E, D}) ->
                       Hs = [{<<":method">>, <<"POST">>}, {<<":path">>, <<"/snakepit.bridge.BridgeService/ExecuteTool">>},
                             {<<"x-snakepit-correlation-id">>, iolist_to_binary(["c-", integer_to_list(I * 7919)])}],
                       {Bin, E1} = demo_hpack:encode(Hs, E),
                       {ok, Hs, D1} = demo_hpack:decode(Bin, D),
                       {_, Size, _} = demo_hpack:table(D1),
                       true = Size =< 4096,
                       {E1, D1}
               end, {demo_hpack:new(), demo_hpack:new()}, lists:seq(1, 500)),
    ok.

json() ->
    V = #{<<"a">> => [1, 2.5, <<"x\"y\n">>, true, false, null], <<"b">> => #{<<"c">> => -3}},
    {ok, V} = demo_json:decode(demo_json:encode(V)),
    {ok, #{<<"type">> := <<"ValueError">>}} = demo_json:decode(<<" {\"type\" : \"ValueError\", \"n\": 1e3, \"u\":\"\\u00e9\"} ">>),
    <<"{\"k\":\"v\"}">> = demo_json:encode(#{k => <<"v">>}),
    ok.

pb() ->
    Req = iolist_to_binary(demo_pb:execute_tool_request(<<"sess_1">>, <<"echo">>,
                                                        [{<<"value">>, <<"\"hi\"">>}],
                                                        [{<<"correlation_id">>, <<"c-1">>}],
                                                        [{<<"blob">>, <<1, 2, 3>>}])),
    F = demo_pb:decode(Req),
    <<"sess_1">> = demo_pb:get(F, 1, <<>>),
    <<"echo">> = demo_pb:get(F, 2, <<>>),
    [{<<"value">>, Any}] = demo_pb:decode_map(F, 3),
    <<"\"hi\"">> = demo_pb:get(demo_pb:decode(Any), 2, <<>>),
    [{<<"correlation_id">>, <<"c-1">>}] = demo_pb:decode_map(F, 4),
    [{<<"blob">>, <<1, 2, 3>>}] = demo_pb:decode_map(F, 6),
    {300, <<>>} = demo_pb:decode_varint(demo_pb:varint(300)),
    Resp = iolist_to_binary([demo_pb:field(1, bool, true), demo_pb:field(3, string, <<"e">>),
                             demo_pb:field(5, int, 12), demo_pb:field(6, bytes, <<0:800>>)]),
    #{success := true, error_message := <<"e">>, execution_time_ms := 12, binary_result_bytes := 100} =
        demo_pb:decode_execute_tool_response(Resp),
    ok.

frames() ->
    Block = crypto_free_rand(40000),
    Io = demo_h2:headers_frames(3, Block, true, 16384),
    {[{1, 1, 3, P1}, {9, 0, 3, P2}, {9, 4, 3, P3}], <<>>} = demo_h2:parse(iolist_to_binary(Io)),
    Block = <<P1/binary, P2/binary, P3/binary>>,
    Msg = crypto_free_rand(50000),
    [Msg] = demo_h2:grpc_messages(demo_h2:grpc_frame(Msg)),
    <<"a b%zz">> = demo_h2:percent_decode(<<"a%20b%zz">>),
    ok.
