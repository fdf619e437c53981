%% The BEAM's own gRPC server (what Cowboy does in Snakepit): workers call back
%% Ping, InitializeSession, RegisterTools, Heartbeat, CleanupSession, GetSession.
-module(demo_grpc_server).
-export([start/1, stop/0]).

-define(OUR_WINDOW, 16777216).

%% start(Port) -> {ok, ActualPort}
start(Port) ->
    Parent = self(),
    Pid = spawn(fun() ->
                        {ok, L} = gen_tcp:listen(Port, [binary, {ip, {127, 0, 0, 1}}, {active, false},
                                                        {reuseaddr, true}, {nodelay, true},
                                                        {exit_on_close, false}, {backlog, 128}]),
                        {ok, P} = inet:port(L),
                        Parent ! {self(), port, P},
                        accept_loop(L)
                end),
    register(demo_grpc_server, Pid),
    receive {Pid, port, P} -> {ok, P} after 5000 -> {error, timeout} end.

stop() ->
    case whereis(demo_grpc_server) of
        undefined -> ok;
        Pid -> Pid ! stop
    end,
    %% close every accepted connection with its final counts
    [P ! {close, self()} || P <- conn_pids()],
    [receive {closed, P} -> ok after 2000 -> ok end || P <- conn_pids()],
    ok.

conn_pids() ->
    [P || {_, #{kind := grpc_server, closed := false, pid := P}} <- ets:tab2list(demo_conns)].

accept_loop(L) ->
    case gen_tcp:accept(L, 200) of
        {ok, Sock} ->
            Pid = spawn(fun() -> receive go -> conn_init(Sock) end end),
            ok = gen_tcp:controlling_process(Sock, Pid),
            Pid ! go,
            accept_loop(L);
        {error, timeout} ->
            receive stop -> gen_tcp:close(L)
            after 0 -> accept_loop(L)
            end;
        {error, _} -> gen_tcp:close(L)
    end.

-record(c, {sock, key, buf = <<>>, preface = false, enc = demo_hpack:new(), dec = demo_hpack:new(),
            streams = #{}, cont = none, unacked = 0, max_frame = 16384}).

conn_init(Sock) ->
    Key = {grpc_server, erlang:unique_integer([positive])},
    demo_h2:conn_register(Key, grpc_server, null, Sock, os:perf_counter(nanosecond)),
    demo_h2:conn_update(Key, fun(M) -> M#{pid => self()} end),
    ok = gen_tcp:send(Sock, [demo_h2:settings([{3, 100}, {4, ?OUR_WINDOW}]),
                             demo_h2:window_update(0, ?OUR_WINDOW - 65535)]),
    ok = inet:setopts(Sock, [{active, once}]),
    loop(#c{sock = Sock, key = Key}).

loop(C = #c{sock = Sock}) ->
    receive
        {tcp, Sock, Data} ->
            Buf = <<(C#c.buf)/binary, Data/binary>>,
            case C#c.preface of
                false ->
                    Pre = demo_h2:preface(),
                    case Buf of
                        <<Pre:24/binary, Rest/binary>> -> got_data(Rest, C#c{preface = true});
                        _ when byte_size(Buf) < 24 -> again(C#c{buf = Buf});
                        _ -> close(C)
                    end;
                true -> got_data(Buf, C)
            end;
        {tcp_closed, Sock} -> close(C);
        {tcp_error, Sock, _} -> close(C);
        {close, From} -> close(C), From ! {closed, self()}
    end.

again(C) ->
    _ = inet:setopts(C#c.sock, [{active, once}]),
    loop(C).

close(C) -> demo_h2:conn_close(C#c.key, C#c.sock).

got_data(Buf, C) ->
    {Frames, Rest} = demo_h2:parse(Buf),
    {Out, C1} = lists:foldl(fun(F, {O, Cs}) -> {O1, Cs1} = frame(F, Cs), {[O | O1], Cs1} end,
                            {[], C#c{buf = Rest}}, Frames),
    {Out2, C2} = case C1#c.unacked of
                     0 -> {[], C1};
                     N -> {demo_h2:window_update(0, N), C1#c{unacked = 0}}
                 end,
    case iolist_size([Out, Out2]) of
        0 -> ok;
        _ -> gen_tcp:send(C#c.sock, [Out, Out2])
    end,
    again(C2).

frame({0, Flags, Sid, P}, C) ->
    Data = strip_padding(Flags, P),
    C1 = C#c{unacked = C#c.unacked + byte_size(P)},
    case maps:find(Sid, C1#c.streams) of
        {ok, St = #{data := D}} ->
            St1 = St#{data => [D, Data]},
            C2 = C1#c{streams = (C1#c.streams)#{Sid => St1}},
            case Flags band 1 of
                1 -> respond(Sid, C2);
                0 ->
                    %% keep long client streams flowing
                    {demo_h2:window_update(Sid, byte_size(P) + 1), C2}
            end;
        error -> {[], C1}
    end;
frame({1, Flags, Sid, P}, C) ->
    P1 = strip_padding(Flags, P),
    Frag = case Flags band 16#20 of 0 -> P1; _ -> <<_:5/binary, R/binary>> = P1, R end,
    case Flags band 4 of
        4 -> headers(Sid, Flags, Frag, C);
        0 -> {[], C#c{cont = {Sid, Flags, Frag}}}
    end;
frame({9, Flags, Sid, P}, C = #c{cont = {Sid, HF, Acc}}) ->
    case Flags band 4 of
        4 -> headers(Sid, HF, <<Acc/binary, P/binary>>, C#c{cont = none});
        0 -> {[], C#c{cont = {Sid, HF, <<Acc/binary, P/binary>>}}}
    end;
frame({3, _, Sid, _}, C) -> {[], C#c{streams = maps:remove(Sid, C#c.streams)}};
frame({4, Flags, 0, P}, C) ->
    case Flags band 1 of
        1 -> {[], C};
        0 ->
            C1 = lists:foldl(fun({1, Sz}, Cs) -> Cs#c{enc = demo_hpack:set_max_size(Cs#c.enc, min(Sz, 4096))};
                                ({5, M}, Cs) -> Cs#c{max_frame = M};
                                (_, Cs) -> Cs
                             end, C, demo_h2:parse_settings(P)),
            {demo_h2:frame(4, 1, 0, <<>>), C1}
    end;
frame({6, Flags, 0, P}, C) when Flags band 1 =:= 0 -> {demo_h2:ping_ack(P), C};
frame(_, C) -> {[], C}.

strip_padding(Flags, P) when Flags band 8 =:= 8 ->
    <<PadLen, R/binary>> = P,
    binary:part(R, 0, byte_size(R) - PadLen);
strip_padding(_, P) -> P.

headers(Sid, Flags, Block, C) ->
    case demo_hpack:decode(Block, C#c.dec) of
        {ok, Hs, Dec} ->
            Path = proplists:get_value(<<":path">>, Hs, <<>>),
            St = #{path => Path, data => []},
            C1 = C#c{dec = Dec, streams = (C#c.streams)#{Sid => St}},
            case Flags band 1 of
                1 -> respond(Sid, C1);
                0 -> {[], C1}
            end;
        {error, R} ->
            io:format(standard_error, "callback server: hpack error ~p~n", [R]),
            {demo_h2:goaway(Sid, 9), C}
    end.

respond(Sid, C) ->
    {#{path := Path, data := D}, Streams} = maps:take(Sid, C#c.streams),
    Req = case demo_h2:grpc_messages(iolist_to_binary(D)) of
              [M | _] -> M;
              [] -> <<>>
          end,
    Method = lists:last(binary:split(Path, <<"/">>, [global])),
    {Status, Body, C1} = handle(Method, Req, C#c{streams = Streams}),
    MF = C1#c.max_frame,
    {Out, Enc2} = case Status of
                      0 ->
                          {H1, Enc1} = demo_hpack:encode([{<<":status">>, <<"200">>},
                                                          {<<"content-type">>, <<"application/grpc">>}],
                                                         C1#c.enc),
                          {T, E2} = demo_hpack:encode([{<<"grpc-status">>, <<"0">>}], Enc1),
                          {[demo_h2:headers_frames(Sid, H1, false, MF),
                            demo_h2:data_frames(Sid, demo_h2:grpc_frame(Body), false, MF),
                            demo_h2:headers_frames(Sid, T, true, MF)], E2};
                      _ ->
                          %% trailers-only response
                          {T, E2} = demo_hpack:encode([{<<":status">>, <<"200">>},
                                                       {<<"content-type">>, <<"application/grpc">>},
                                                       {<<"grpc-status">>, integer_to_binary(Status)},
                                                       {<<"grpc-message">>, <<"unimplemented">>}],
                                                      C1#c.enc),
                          {demo_h2:headers_frames(Sid, T, true, MF), E2}
                  end,
    {Out, C1#c{enc = Enc2}}.

handle(<<"Ping">>, Req, C) ->
    Msg = demo_pb:get(demo_pb:decode(Req), 1, <<>>),
    {0, [demo_pb:field(1, string, <<"pong: ", Msg/binary>>),
         demo_pb:field(2, message_always, demo_pb:timestamp_now())], C};
handle(<<"Heartbeat">>, _Req, C) ->
    {0, [demo_pb:field(1, message_always, demo_pb:timestamp_now()), demo_pb:field(2, bool, true)], C};
handle(<<"InitializeSession">>, _Req, C) ->
    {0, demo_pb:field(1, bool, true), C};
handle(<<"RegisterTools">>, Req, C) ->
    case demo_pb:get(demo_pb:decode(Req), 3, <<>>) of
        <<>> -> ok;
        Wid -> demo_h2:conn_update(C#c.key, fun(M) -> M#{worker_id => Wid} end)
    end,
    {0, demo_pb:field(1, bool, true), C};
handle(<<"CleanupSession">>, _Req, C) ->
    {0, demo_pb:field(1, bool, true), C};
handle(<<"GetSession">>, Req, C) ->
    Sess = demo_pb:get(demo_pb:decode(Req), 1, <<>>),
    {0, [demo_pb:field(1, string, Sess), demo_pb:field(5, bool, true)], C};
handle(_, _Req, C) ->
    {12, <<>>, C}.
