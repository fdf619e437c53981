%% One long-lived HTTP/2 connection from the BEAM to a worker (what Gun does):
%% concurrent gRPC unary/server-streaming calls on odd stream ids, flow control
%% both ways, CONTINUATION for big header blocks, GOAWAY/RST_STREAM handling.
-module(demo_h2_client).
-behaviour(gen_server).
-export([start/3, request/5, request/6, request_async/4, close/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(OUR_WINDOW, 16777216).
-define(UPDATE_AT, 4194304).

-record(s, {sock, key, worker_id, owner, authority, buf = <<>>,
            enc = demo_hpack:new(), dec = demo_hpack:new(),
            next_id = 1, streams = #{},
            conn_send_win = 65535, peer_init_win = 65535, peer_max_frame = 16384,
            conn_unacked = 0, goaway = false, cont = none}).

start(Port, WorkerId, Owner) ->
    gen_server:start(?MODULE, {Port, WorkerId, Owner}, []).

%% request(Conn, Method, ProtobufBody, CorrelationId, TimeoutMs) -> {ok, Map} | {error, Reason}
request(Conn, Method, Body, CorrId, Timeout) ->
    request(Conn, Method, Body, CorrId, Timeout, <<"30S">>).

%% request/6: `Deadline` is the grpc-timeout header's value (e.g. <<"300m">>).
request(Conn, Method, Body, CorrId, Timeout, Deadline) ->
    try gen_server:call(Conn, {request, Method, Body, CorrId, Deadline}, Timeout)
    catch
        exit:{timeout, _} -> {error, timeout};
        exit:_ -> {error, exit}
    end.

request_async(Conn, Method, Body, CorrId) ->
    gen_server:cast(Conn, {request, Method, Body, CorrId}).

close(Conn) ->
    try gen_server:call(Conn, close, 5000) catch exit:_ -> ok end.

init({Port, WorkerId, Owner}) ->
    %% The ground truth's clocks are read here: run ahead of the load processes so
    %% the BEAM's own measurement carries as little scheduling delay as it can.
    process_flag(priority, high),
    case gen_tcp:connect({127, 0, 0, 1}, Port,
                         [binary, {active, false}, {nodelay, true}, {packet, raw},
                          {exit_on_close, false}], 5000) of
        {ok, Sock} ->
            Key = {grpc_client, erlang:unique_integer([positive])},
            demo_h2:conn_register(Key, grpc_client, WorkerId, Sock, os:perf_counter(nanosecond)),
            ok = gen_tcp:send(Sock, [demo_h2:preface(),
                                     demo_h2:settings([{2, 0}, {4, ?OUR_WINDOW}]),
                                     demo_h2:window_update(0, ?OUR_WINDOW - 65535)]),
            ok = inet:setopts(Sock, [{active, once}]),
            monitor(process, Owner),
            {ok, #s{sock = Sock, key = Key, worker_id = WorkerId, owner = Owner,
                    authority = iolist_to_binary(["127.0.0.1:", integer_to_list(Port)])}};
        {error, R} -> {stop, R}
    end.

handle_call({request, Method, Body, CorrId}, From, S) ->
    {noreply, start_stream(Method, Body, CorrId, From, S)};
handle_call({request, Method, Body, CorrId, Deadline}, From, S) ->
    {noreply, start_stream(Method, Body, CorrId, From, S, Deadline)};
handle_call(close, _From, S) ->
    {stop, normal, ok, shutdown(S)}.

handle_cast({request, Method, Body, CorrId}, S) ->
    {noreply, start_stream(Method, Body, CorrId, none, S)}.

handle_info({tcp, Sock, Data}, S = #s{sock = Sock, buf = Buf}) ->
    T = os:perf_counter(nanosecond),
    {Frames, Rest} = demo_h2:parse(<<Buf/binary, Data/binary>>),
    {Out, S1} = lists:foldl(fun(F, {O, St}) ->
                                    {O1, St1} = frame(F, T, St),
                                    {[O | O1], St1}
                            end, {[], S#s{buf = Rest}}, Frames),
    {Out2, S2} = flush_pending(S1),
    case iolist_size([Out, Out2]) of
        0 -> ok;
        _ -> send(S2, [Out, Out2])
    end,
    case S2#s.goaway andalso map_size(S2#s.streams) =:= 0 of
        true -> {stop, normal, shutdown(S2)};
        false ->
            _ = inet:setopts(Sock, [{active, once}]),
            {noreply, S2}
    end;
handle_info({tcp_closed, _}, S) -> {stop, normal, shutdown(S)};
handle_info({tcp_error, _, _}, S) -> {stop, normal, shutdown(S)};
handle_info({'DOWN', _, process, Owner, _}, S = #s{owner = Owner}) ->
    {stop, normal, shutdown(S)};
handle_info(_, S) -> {noreply, S}.

terminate(_, _) -> ok.

send(#s{sock = Sock}, Io) -> gen_tcp:send(Sock, Io).

shutdown(S = #s{sock = undefined}) -> S;
shutdown(S = #s{sock = Sock, key = Key, streams = Streams}) ->
    T = os:perf_counter(nanosecond),
    maps:foreach(fun(_Sid, St) -> reply(St, {error, exit, partial(St, T)}) end, Streams),
    demo_h2:conn_close(Key, Sock),
    S#s{sock = undefined, streams = #{}}.

partial(St, T) ->
    #{stream_id => maps:get(sid, St), start_ns => maps:get(start_ns, St), end_ns => T,
      start_unix_ns => maps:get(start_unix, St), req_bytes => maps:get(req_bytes, St),
      resp_bytes => maps:get(resp_bytes, St)}.

reply(#{from := none}, {ok, #{grpc_status := 0}}) -> ok;
reply(#{from := none}, R) ->
    %% heartbeats and pings have nobody waiting: make their failures visible
    io:format(standard_error, "background call failed: ~p~n", [R]);
reply(#{from := From}, R) -> gen_server:reply(From, R).

%% ---- sending ----
start_stream(Method, Body, CorrId, From, S = #s{}) ->
    start_stream(Method, Body, CorrId, From, S, <<"30S">>).

start_stream(_Method, _Body, _CorrId, From, S = #s{goaway = true}, _Deadline) ->
    reply(#{from => From}, {error, goaway}), S;
start_stream(_Method, _Body, _CorrId, From, S = #s{sock = undefined}, _Deadline) ->
    reply(#{from => From}, {error, exit}), S;
start_stream(Method, Body, CorrId, From, S = #s{next_id = Sid, enc = Enc}, Deadline) ->
    KeepOpen = Method =:= <<"StreamTelemetry">>,
    %% The subscription lives as long as the connection, as Snakepit's does: a
    %% deadline would end it after 30 s and the worker's telemetry with it.
    Timeout = case KeepOpen of
                  true -> [];
                  false -> [{<<"grpc-timeout">>, Deadline}]
              end,
    Headers = [{<<":method">>, <<"POST">>}, {<<":scheme">>, <<"http">>},
               {<<":path">>, [<<"/snakepit.bridge.BridgeService/">>, Method]},
               {<<":authority">>, S#s.authority},
               {<<"content-type">>, <<"application/grpc">>},
               {<<"user-agent">>, <<"grpc-elixir/0.10.0">>},
               {<<"te">>, <<"trailers">>}]
        ++ Timeout ++ [{<<"x-snakepit-correlation-id">>, CorrId}],
    {Block, Enc1} = demo_hpack:encode(Headers, Enc),
    HF = demo_h2:headers_frames(Sid, Block, false, S#s.peer_max_frame),
    Msg = demo_h2:grpc_frame(Body),
    %% StreamTelemetry is bidirectional and long-lived: its request side stays open
    %% (the worker streams events until the connection closes), as Snakepit's does.
    St0 = #{sid => Sid, from => From, q => Msg, end_sent => false,
            keep_open => KeepOpen,
            send_win => S#s.peer_init_win, headers => undefined, trailers => [],
            data => [], resp_bytes => 0, unacked => 0, req_bytes => byte_size(Msg)},
    {DF, St1, ConnWin} = take_data(St0, S#s.conn_send_win, S#s.peer_max_frame),
    T0 = os:perf_counter(nanosecond),
    U0 = os:system_time(nanosecond),
    _ = send(S, [HF, DF]),
    St2 = St1#{start_ns => T0, start_unix => U0},
    S#s{next_id = Sid + 2, enc = Enc1, conn_send_win = ConnWin,
        streams = maps:put(Sid, St2, S#s.streams)}.

take_data(St = #{end_sent := true}, ConnWin, _MF) -> {[], St, ConnWin};
take_data(St = #{sid := Sid, q := Q, send_win := SW}, ConnWin, MF) ->
    N = lists:min([byte_size(Q), SW, ConnWin]),
    case N =:= byte_size(Q) of
        true ->
            EndStream = not maps:get(keep_open, St, false),
            {demo_h2:data_frames(Sid, Q, EndStream, MF),
             St#{q => <<>>, end_sent => true, send_win => SW - N}, ConnWin - N};
        false when N > 0 ->
            <<Now:N/binary, Later/binary>> = Q,
            {demo_h2:data_frames(Sid, Now, false, MF),
             St#{q => Later, send_win => SW - N}, ConnWin - N};
        false -> {[], St, ConnWin}
    end.

flush_pending(S = #s{streams = Streams}) ->
    Pending = lists:sort([Sid || {Sid, #{end_sent := false}} <- maps:to_list(Streams)]),
    lists:foldl(fun(Sid, {Out, St = #s{streams = Ss}}) ->
                        {DF, Stream1, CW} = take_data(maps:get(Sid, Ss), St#s.conn_send_win,
                                                      St#s.peer_max_frame),
                        {[Out, DF], St#s{conn_send_win = CW, streams = Ss#{Sid => Stream1}}}
                end, {[], S}, Pending).

%% ---- receiving ----
frame({0, Flags, Sid, P}, T, S) ->   %% DATA
    Len = byte_size(P),
    Data = strip_padding(Flags, P),
    CU = S#s.conn_unacked + Len,
    {Out1, CU1} = case CU >= ?UPDATE_AT of
                      true -> {demo_h2:window_update(0, CU), 0};
                      false -> {[], CU}
                  end,
    S1 = S#s{conn_unacked = CU1},
    case maps:find(Sid, S1#s.streams) of
        {ok, St} ->
            %% A long-lived stream's messages are counted, not kept: nobody reads them
            %% and the BEAM would hold every event of the connection's life.
            Kept = case maps:get(keep_open, St) of
                       true -> [];
                       false -> [Data | maps:get(data, St)]
                   end,
            St1 = St#{data => Kept,
                      resp_bytes => maps:get(resp_bytes, St) + byte_size(Data),
                      unacked => maps:get(unacked, St) + Len},
            EndStream = Flags band 1 =:= 1,
            {Out2, St2} = case (not EndStream) andalso maps:get(unacked, St1) >= ?UPDATE_AT of
                              true -> {demo_h2:window_update(Sid, maps:get(unacked, St1)),
                                       St1#{unacked => 0}};
                              false -> {[], St1}
                          end,
            S2 = S1#s{streams = (S1#s.streams)#{Sid => St2}},
            case EndStream of
                true -> {[Out1, Out2], finish(Sid, T, S2)};
                false -> {[Out1, Out2], S2}
            end;
        error -> {Out1, S1}
    end;
frame({1, Flags, Sid, P}, T, S) ->   %% HEADERS
    P1 = strip_padding(Flags, P),
    Frag = case Flags band 16#20 of
               0 -> P1;
               _ -> <<_:5/binary, R/binary>> = P1, R
           end,
    case Flags band 4 of
        4 -> {[], header_block(Sid, Flags, Frag, T, S)};
        0 -> {[], S#s{cont = {Sid, Flags, Frag}}}
    end;
frame({9, Flags, Sid, P}, T, S = #s{cont = {Sid, HFlags, Acc}}) ->  %% CONTINUATION
    case Flags band 4 of
        4 -> {[], header_block(Sid, HFlags, <<Acc/binary, P/binary>>, T, S#s{cont = none})};
        0 -> {[], S#s{cont = {Sid, HFlags, <<Acc/binary, P/binary>>}}}
    end;
frame({3, _Flags, Sid, <<Code:32>>}, T, S) ->  %% RST_STREAM
    case maps:take(Sid, S#s.streams) of
        {St, Rest} -> reply(St, {error, {rst_stream, Code}, partial(St, T)}),
                      {[], S#s{streams = Rest}};
        error -> {[], S}
    end;
frame({4, Flags, 0, P}, _T, S) ->  %% SETTINGS
    case Flags band 1 of
        1 -> {[], S};
        0 -> {demo_h2:frame(4, 1, 0, <<>>),
              lists:foldl(fun apply_setting/2, S, demo_h2:parse_settings(P))}
    end;
frame({6, Flags, 0, P}, _T, S) ->  %% PING
    case Flags band 1 of
        1 -> {[], S};
        0 -> {demo_h2:ping_ack(P), S}
    end;
frame({7, _Flags, 0, <<_:1, Last:31, _Code:32, _/binary>>}, T, S) ->  %% GOAWAY
    {Dead, Alive} = maps:fold(fun(Sid, St, {D, A}) when Sid > Last -> {[St | D], A};
                                 (Sid, St, {D, A}) -> {D, A#{Sid => St}}
                              end, {[], #{}}, S#s.streams),
    [reply(St, {error, goaway, partial(St, T)}) || St <- Dead],
    {[], S#s{goaway = true, streams = Alive}};
frame({8, _Flags, 0, <<_:1, Inc:31>>}, _T, S) ->  %% WINDOW_UPDATE (connection)
    {[], S#s{conn_send_win = S#s.conn_send_win + Inc}};
frame({8, _Flags, Sid, <<_:1, Inc:31>>}, _T, S) ->
    case maps:find(Sid, S#s.streams) of
        {ok, St} -> {[], S#s{streams = (S#s.streams)#{Sid => St#{send_win => maps:get(send_win, St) + Inc}}}};
        error -> {[], S}
    end;
frame(_, _T, S) -> {[], S}.

strip_padding(Flags, P) when Flags band 8 =:= 8 ->
    <<PadLen, R/binary>> = P,
    binary:part(R, 0, byte_size(R) - PadLen);
strip_padding(_, P) -> P.

apply_setting({1, Size}, S) -> S#s{enc = demo_hpack:set_max_size(S#s.enc, min(Size, 4096))};
apply_setting({4, Win}, S = #s{peer_init_win = Old, streams = Ss}) ->
    Delta = Win - Old,
    S#s{peer_init_win = Win,
        streams = maps:map(fun(_, St) -> St#{send_win => maps:get(send_win, St) + Delta} end, Ss)};
apply_setting({5, Max}, S) -> S#s{peer_max_frame = Max};
apply_setting(_, S) -> S.

header_block(Sid, Flags, Block, T, S) ->
    case demo_hpack:decode(Block, S#s.dec) of
        {ok, Hs, Dec1} ->
            S1 = S#s{dec = Dec1},
            case maps:find(Sid, S1#s.streams) of
                {ok, St} ->
                    St1 = case maps:get(headers, St) of
                              undefined -> St#{headers => Hs};
                              _ -> St#{trailers => Hs}
                          end,
                    S2 = S1#s{streams = (S1#s.streams)#{Sid => St1}},
                    case Flags band 1 of
                        1 -> finish(Sid, T, S2);
                        0 -> S2
                    end;
                error -> S1
            end;
        {error, R} ->
            %% A broken header table cannot be recovered: drop the connection.
            io:format(standard_error, "hpack decode error from ~s: ~p~n", [S#s.worker_id, R]),
            _ = send(S, demo_h2:goaway(0, 9)),
            S#s{goaway = true}
    end.

finish(Sid, T, S) ->
    {St, Rest} = maps:take(Sid, S#s.streams),
    Headers = maps:get(headers, St),
    Trailers = maps:get(trailers, St),
    All = case Headers of undefined -> Trailers; _ -> Headers ++ Trailers end,
    HStatus = proplists:get_value(<<":status">>, All),
    GStatus = case proplists:get_value(<<"grpc-status">>, All) of
                  undefined when HStatus =:= <<"200">> -> 2;
                  undefined -> 14;
                  V -> binary_to_integer(V)
              end,
    GMsg = demo_h2:percent_decode(proplists:get_value(<<"grpc-message">>, All, <<>>)),
    Body = iolist_to_binary(lists:reverse(maps:get(data, St))),
    R = (partial(St, T))#{grpc_status => GStatus, grpc_message => GMsg,
                          messages => demo_h2:grpc_messages(Body)},
    reply(St, {ok, R}),
    S#s{streams = Rest}.
