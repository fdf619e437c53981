%% Load generator: round-robin over workers and sessions, per-worker concurrency
%% (in-flight HTTP/2 streams), optional rate limit, one ground-truth line per call.
-module(demo_load).
-export([run/1, default_mix/0]).

default_mix() -> #{echo => 5, sleep => 2, cpu => 1, fail => 1, stream => 1, numpy => 1, snakebridge => 1}.

pipe_tools() -> [echo, sleep, cpu, fail].

%% Opts: the map of `{load, Map}`; duration_ms => infinity runs until a `stop` message.
run(Opts) ->
    Rate = maps:get(rate, Opts, 0),
    Duration = maps:get(duration_ms, Opts, 5000),
    Conc = max(1, maps:get(concurrency, Opts, 1)),
    Mix = maps:get(mix, Opts, default_mix()),
    Pools = [to_bin(P) || P <- maps:get(pools, Opts, [default, legacy])],
    MixSeq = list_to_tuple(lists:append([lists:duplicate(W, K) || {K, W} <- lists:sort(maps:to_list(Mix)), W > 0])),
    Fd = case maps:get(ground_truth, Opts, undefined) of
             undefined -> undefined;
             Path ->
                 {ok, F} = file:open(Path, [append, raw, binary, {delayed_write, 262144, 200}]),
                 F
         end,
    T0 = erlang:monotonic_time(microsecond),
    End = case Duration of infinity -> infinity; _ -> T0 + Duration * 1000 end,
    St = #{rate => Rate, conc => Conc, mix => MixSeq, pools => Pools, fd => Fd, t0 => T0,
           end_t => End, seq => 0, rr => 0, inflight => #{}, calls => 0, ok => 0, error => 0,
           opts => Opts, stopped => false},
    case tuple_size(MixSeq) of
        0 -> finish(St);
        _ -> loop(St)
    end.

to_bin(A) when is_atom(A) -> atom_to_binary(A, utf8);
to_bin(L) when is_list(L) -> list_to_binary(L);
to_bin(B) when is_binary(B) -> B.

now_us() -> erlang:monotonic_time(microsecond).

loop(St = #{end_t := End, stopped := Stopped, seq := Seq, opts := Opts}) ->
    %% max_calls: stop after that many calls (a failure storm of an exact size).
    Max = maps:get(max_calls, Opts, infinity),
    case Stopped orelse (End =/= infinity andalso now_us() >= End)
        orelse (Max =/= infinity andalso Seq >= Max) of
        true -> drain(St);
        false -> next(St)
    end.

next(St = #{seq := Seq, mix := Mix, rate := Rate, t0 := T0, conc := Conc}) ->
    %% rate limit: call k is due at t0 + k/rate
    Wait = case Rate > 0 of
               true -> (T0 + (Seq * 1000000) div Rate - now_us()) div 1000;
               false -> 0
           end,
    case Wait > 0 of
        true -> loop(wait(St, min(Wait, 50)));
        false ->
            Tool = element(Seq rem tuple_size(Mix) + 1, Mix),
            case candidates(Tool, St) of
                [] -> loop(wait(St, 10));
                Cands ->
                    %% round-robin, skipping workers whose streams are all busy
                    RR = maps:get(rr, St),
                    N = length(Cands),
                    In = maps:get(inflight, St),
                    Free = [{K, W} || K <- lists:seq(0, N - 1),
                                      W <- [lists:nth((RR + K) rem N + 1, Cands)],
                                      maps:get(maps:get(worker_id, W), In, 0) < Conc],
                    case Free of
                        [] -> loop(wait(St, 100));
                        [{K, W} | _] -> loop(dispatch(St#{rr => RR + K + 1}, W, Tool))
                    end
            end
    end.

candidates(Tool, #{pools := Pools}) ->
    Ws = [W || {_, W = #{pool := P, ready := true}} <- ets:tab2list(demo_workers), lists:member(P, Pools)],
    Ok = [W || W = #{transport := T} <- Ws, T =:= grpc orelse lists:member(Tool, pipe_tools()),
               alive(W)],
    lists:sort(fun(A, B) -> maps:get(seq, A) =< maps:get(seq, B) end, Ok).

%% a worker whose connection just dropped is not a target any more
alive(#{transport := grpc, conn := C}) -> is_process_alive(C);
alive(#{pid := P}) -> is_process_alive(P).

wait(St, Ms) ->
    receive
        {done, Id, Line, Ok} -> done(St, Id, Line, Ok);
        stop -> St#{stopped => true}
    after Ms -> St
    end.

done(St = #{inflight := In, fd := Fd}, Id, Line, Ok) ->
    case Fd of undefined -> ok; _ -> file:write(Fd, [Line, $\n]) end,
    St1 = St#{inflight => In#{Id => maps:get(Id, In, 1) - 1}, calls => maps:get(calls, St) + 1},
    case Ok of
        true -> St1#{ok => maps:get(ok, St) + 1};
        false -> St1#{error => maps:get(error, St) + 1}
    end.

drain(St = #{inflight := In}) ->
    case lists:sum(maps:values(In)) of
        0 -> finish(St);
        _ ->
            receive
                {done, Id, Line, Ok} -> drain(done(St, Id, Line, Ok));
                stop -> drain(St)
            after 180000 -> finish(St)
            end
    end.

finish(St = #{fd := Fd}) ->
    case Fd of undefined -> ok; _ -> file:close(Fd) end,
    {maps:get(calls, St), maps:get(ok, St), maps:get(error, St)}.

dispatch(St = #{seq := Seq0, inflight := In, opts := Opts}, W = #{worker_id := Id}, Tool) ->
    Seq = Seq0 + 1,
    Session = iolist_to_binary(["sess_", integer_to_list(Seq0 rem 4 + 1)]),
    Me = self(),
    spawn(fun() ->
                  {Line, Ok} = try call(Seq, W, Tool, Session, Opts)
                               catch C:R:Stack ->
                                       io:format(standard_error, "load call crashed: ~p:~p ~p~n", [C, R, Stack]),
                                       {demo_json:encode(#{seq => Seq, success => false, error_type => <<"crash">>}), false}
                               end,
                  Me ! {done, Id, Line, Ok}
          end),
    St#{seq => Seq, inflight => In#{Id => maps:get(Id, In, 0) + 1}}.

%% ---- one call ----
j(V) -> demo_json:encode(V).

grpc_params(echo, Seq, _O) -> {<<"echo">>, [{<<"value">>, j(iolist_to_binary(["hello-", integer_to_list(Seq)]))}], []};
grpc_params(sleep, _, O) -> {<<"sleep">>, [{<<"ms">>, j(maps:get(sleep_ms, O, 20))}], []};
grpc_params(cpu, _, O) -> {<<"cpu">>, [{<<"n">>, j(maps:get(cpu_n, O, 200000))}], []};
%% Tools with a known time split (demo_split_tools.py).
grpc_params(big_json, _, O) -> {<<"big_json">>, [{<<"data">>, big_json_doc(maps:get(big_json_bytes, O, 1048576))}], []};
grpc_params(cpu_spin, _, O) -> {<<"cpu_spin">>, [{<<"ms">>, j(maps:get(spin_ms, O, 200))}], []};
grpc_params(io_wait, _, O) -> {<<"io_wait">>, [{<<"fifo">>, j(list_to_binary(maps:get(io_fifo, O, "/nonexistent")))}], []};
grpc_params(io_wait_offloaded, _, O) -> {<<"io_wait_offloaded">>, [{<<"fifo">>, j(list_to_binary(maps:get(io_fifo, O, "/nonexistent")))}], []};
grpc_params(gil_contention, _, O) -> {<<"gil_contention">>, [{<<"ms">>, j(maps:get(spin_ms, O, 300))}], []};
grpc_params(fail, _, _) -> {<<"fail">>, [{<<"message">>, j(<<"boom">>)}], []};
grpc_params(large, _, O) -> {<<"large">>, [{<<"bytes">>, j(maps:get(large_bytes, O, 1048576))}], []};
grpc_params(upload, _, O) ->
    {<<"upload">>, [], [{<<"blob">>, binary:copy(<<"u">>, maps:get(upload_bytes, O, 1048576))}]};
grpc_params(stream, _, O) ->
    {<<"stream">>, [{<<"count">>, j(maps:get(stream_count, O, 5))},
                    {<<"chunk_bytes">>, j(maps:get(stream_chunk_bytes, O, 1024))}], []};
grpc_params(numpy, _, O) -> {<<"numpy_mean">>, [{<<"n">>, j(maps:get(numpy_n, O, 10000))}], []};
grpc_params(hot_path, _, O) ->
    {<<"hot_path">>, [{<<"ms">>, j(maps:get(hot_ms, O, 200))},
                      {<<"python_share">>, j(maps:get(hot_python_share, O, 0.7))}], []};
%% Batch size and step follow the call's sequence number, so tests can recompute them.
grpc_params(ml_infer, Seq, _) ->
    {<<"ml_infer">>, [{<<"model">>, j(<<"tiny-mlp">>)}, {<<"batch_size">>, j(1 + Seq rem 8)},
                      {<<"seq_len">>, j(16)}], []};
grpc_params(ml_train, Seq, _) ->
    {<<"ml_train_step">>, [{<<"lr">>, j(0.01)}, {<<"epoch">>, j(1)}, {<<"step">>, j(Seq)}], []};
%% Repro-script failures (issue 11): each fails in its own way; see repro_call_opts/2.
grpc_params(repro_fail, Seq, _) ->
    {<<"fail">>, [{<<"message">>, j(iolist_to_binary(["repro-boom-", integer_to_list(Seq)]))},
                  {<<"api_key">>, j(<<"sk-demo-5ecret-api-key-0042">>)}], []};
grpc_params(repro_snakebridge, _, _) ->
    {<<"snakebridge.call">>,
     [{<<"library">>, j(<<"math">>)}, {<<"function">>, j(<<"sqrt">>)},
      {<<"python_module">>, j(<<"math">>)}, {<<"call_type">>, j(<<"function">>)},
      {<<"args">>, j([-1])}, {<<"kwargs">>, j(#{})}], []};
grpc_params(repro_deadline, _, O) -> {<<"sleep">>, [{<<"ms">>, j(maps:get(repro_sleep_ms, O, 2000))}], []};
grpc_params(repro_exit, _, _) -> {<<"exit">>, [{<<"code">>, j(3)}], []};
grpc_params(repro_big, _, O) ->
    {<<"reject_blob">>, [{<<"data">>, j(binary:copy(<<"snakepit-">>, maps:get(repro_big_bytes, O, 3145728) div 9))}], []};
grpc_params(snakebridge, _, _) ->
    {<<"snakebridge.call">>,
     [{<<"library">>, j(<<"numpy">>)}, {<<"function">>, j(<<"mean">>)},
      {<<"python_module">>, j(<<"numpy">>)}, {<<"call_type">>, j(<<"function">>)},
      {<<"args">>, j([[1, 2, 3, 4]])}, {<<"kwargs">>, j(#{})}], []}.

%% A JSON document of about `Bytes` bytes: records of numbers and short strings (a
%% structured document, not one big string), built once per size.
big_json_doc(Bytes) ->
    Key = {?MODULE, big_json, Bytes},
    case persistent_term:get(Key, undefined) of
        undefined ->
            Rec = fun(I) -> [<<"{\"i\":">>, integer_to_binary(I), <<",\"x\":">>,
                             integer_to_binary(I * 7919 rem 1000003),
                             <<",\"s\":\"snakepit-">>, integer_to_binary(I rem 997), <<"\"}">>]
                  end,
            N = max(1, Bytes div 44),
            Doc = iolist_to_binary([<<"[">>, lists:join(<<",">>, [Rec(I) || I <- lists:seq(1, N)]), <<"]">>]),
            persistent_term:put(Key, Doc),
            Doc;
        Doc -> Doc
    end.

call(Seq, W = #{transport := grpc, conn := Conn}, Tool, Session, Opts) ->
    Corr = iolist_to_binary(["c-", demo_worker:unique()]),
    {Name, Params, BinParams} = grpc_params(Tool, Seq, Opts),
    {Method, Extra} = case Tool of
                          stream -> {<<"ExecuteStreamingTool">>, demo_pb:field(5, bool, true)};
                          _ -> {<<"ExecuteTool">>, []}
                      end,
    {ExtraMeta, Deadline} = repro_call_opts(Tool, Opts),
    Body = [demo_pb:execute_tool_request(Session, Name, Params, [{<<"correlation_id">>, Corr} | ExtraMeta],
                                         BinParams),
            Extra],
    {Lib, Fun} = case Tool of
                     snakebridge -> {<<"numpy">>, <<"mean">>};
                     repro_snakebridge -> {<<"math">>, <<"sqrt">>};
                     _ -> {null, Name}
                 end,
    R = demo_h2_client:request(Conn, Method, Body, Corr, 120000, Deadline),
    Now = os:perf_counter(nanosecond),
    {Timing, Success, ErrType, GStatus} =
        case R of
            {ok, M = #{grpc_status := 0, messages := Msgs}} ->
                {S, E} = outcome(Method, Msgs),
                {M, S, E, 0};
            {ok, M = #{grpc_status := GS}} -> {M, false, demo_h2:status_name(GS), GS};
            {error, Reason, M} -> {M, false, err_name(Reason), null};
            {error, Reason} ->
                {#{start_ns => Now, end_ns => Now, start_unix_ns => os:system_time(nanosecond),
                   stream_id => null, req_bytes => 0, resp_bytes => 0}, false, err_name(Reason), null}
        end,
    line(Seq, W, <<"grpc">>, Method, Name, Lib, Fun, Session, Corr, Timing, Success, ErrType, GStatus);
call(Seq, W = #{transport := pipe, pid := Pid}, Tool, Session, Opts) ->
    Cmd = atom_to_binary(Tool, utf8),
    {_, Params, _} = grpc_params(Tool, Seq, Opts),
    Args = {obj, [{K, {raw, V}} || {K, V} <- Params]},
    R = demo_worker:call_pipe(Pid, Cmd, Args, 120000),
    Now = os:perf_counter(nanosecond),
    Base = #{start_ns => Now, end_ns => Now, start_unix_ns => os:system_time(nanosecond),
             req_bytes => 0, resp_bytes => 0},
    {Timing, Success, ErrType} =
        case R of
            {ok, M = #{response := Resp}} ->
                case maps:get(<<"success">>, Resp, false) of
                    true -> {M, true, null};
                    _ -> {M, false, error_type_of(maps:get(<<"error">>, Resp, null))}
                end;
            {error, Reason, M} -> {maps:merge(Base, M), false, err_name(Reason)}
        end,
    Corr = case Timing of #{id := Id} -> integer_to_binary(Id); _ -> null end,
    line(Seq, W, <<"pipe">>, <<"pipe">>, Cmd, null, Cmd, Session, Corr, Timing#{stream_id => null},
         Success, ErrType, null).

%% Request metadata and grpc-timeout: repro_fail carries a bearer token (it must never
%% reach a repro script), repro_deadline a deadline shorter than its sleep.
repro_call_opts(repro_fail, _) ->
    {[{<<"authorization">>, <<"Bearer demo-token-7f3c9a1b2e4d">>}], <<"30S">>};
repro_call_opts(repro_deadline, O) ->
    {[], iolist_to_binary([integer_to_list(maps:get(repro_deadline_ms, O, 300)), "m"])};
repro_call_opts(_, _) -> {[], <<"30S">>}.

err_name(exit) -> <<"exit">>;
err_name(goaway) -> <<"goaway">>;
err_name(timeout) -> <<"timeout">>;
err_name({rst_stream, _}) -> <<"reset">>;
err_name(R) -> iolist_to_binary(io_lib:format("~p", [R])).

error_type_of(#{<<"type">> := T}) when is_binary(T) -> T;
error_type_of(_) -> <<"unknown">>.

outcome(<<"ExecuteTool">>, [Msg | _]) ->
    case demo_pb:decode_execute_tool_response(Msg) of
        #{success := true} -> {true, null};
        #{error_message := EM} ->
            case demo_json:decode(EM) of
                {ok, E} -> {false, error_type_of(E)};
                _ -> {false, <<"unknown">>}
            end
    end;
outcome(<<"ExecuteTool">>, []) -> {false, <<"empty_response">>};
outcome(<<"ExecuteStreamingTool">>, Msgs) ->
    case Msgs =/= [] andalso maps:get(is_final, demo_pb:decode_tool_chunk(lists:last(Msgs))) of
        true -> {true, null};
        false -> {false, <<"incomplete_stream">>}
    end.

line(Seq, #{pool := Pool, worker_id := Wid, os_pid := OsPid}, Transport, Method, Tool, Lib, Fun,
     Session, Corr, T, Success, ErrType, GStatus) ->
    Start = maps:get(start_ns, T),
    End = maps:get(end_ns, T),
    L = demo_json:encode({obj, [{seq, Seq}, {pool, Pool}, {worker_id, Wid}, {worker_pid, OsPid},
                                {transport, Transport}, {method, Method}, {tool, Tool},
                                {library, Lib}, {function, Fun}, {session_id, Session},
                                {correlation_id, Corr}, {stream_id, maps:get(stream_id, T, null)},
                                {start_mono_ns, Start}, {end_mono_ns, End}, {duration_ns, End - Start},
                                {start_unix_ns, maps:get(start_unix_ns, T)},
                                {success, Success}, {error_type, ErrType}, {grpc_status, GStatus},
                                {request_bytes, maps:get(req_bytes, T, 0)},
                                {response_bytes, maps:get(resp_bytes, T, 0)}]}),
    {L, Success}.
