%% One worker: owns its Erlang port (the Python process) and, for gRPC workers,
%% the long-lived HTTP/2 connection to it. Respawns a replacement when the port exits.
-module(demo_worker).
-export([start/4, call_pipe/4, stop_all/0, unique/0, flag/1, set_flag/2]).

%% Cfg: #{python, repo, beam_port, run_id, instance, heartbeat_ms, pyver}
start(Cfg, Pool, Transport, Index) ->
    Seq = erlang:unique_integer([positive, monotonic]),
    Id = case Index of
             undefined -> iolist_to_binary([Pool, "_worker_", unique()]);
             I -> iolist_to_binary([Pool, "_worker_", integer_to_list(I), "_", unique()])
         end,
    spawn(fun() ->
                  case Transport of
                      grpc -> grpc_init(Cfg, Pool, Id, Seq);
                      pipe -> pipe_init(Cfg, Pool, Id, Seq)
                  end
          end).

unique() ->
    N = erlang:unique_integer([positive]) * 1296 + rand:uniform(1296) - 1,
    string:lowercase(integer_to_list(N, 36)).

flag(Name) ->
    case ets:lookup(demo_flags, Name) of
        [{_, V}] -> V;
        [] -> false
    end.

set_flag(Name, V) -> ets:insert(demo_flags, {Name, V}).

stop_all() ->
    Pids = [P || {_, #{pid := P}} <- ets:tab2list(demo_workers)],
    [P ! {stop, self()} || P <- Pids],
    [receive {stopped, P} -> ok after 3000 -> ok end || P <- Pids],
    ok.

log(Fmt, Args) -> io:format(standard_error, Fmt ++ "~n", Args).

register_worker(Id, Info) -> ets:insert(demo_workers, {Id, Info}).

respawn(Cfg, Pool, Transport) ->
    case flag(stopping) of
        true -> ok;
        false -> start(Cfg, Pool, Transport, undefined)
    end.

%% ---------------- gRPC workers ----------------
grpc_init(Cfg = #{python := Py, repo := Repo, beam_port := BP, run_id := RunId,
                  instance := Inst, heartbeat_ms := HB, pyver := PyVer}, Pool, Id, Seq) ->
    Tmp = os:getenv("TMPDIR", "/tmp"),
    Ready = filename:join(Tmp, iolist_to_binary(["snakepit_ready_", Id, "_",
                                                 integer_to_list(erlang:unique_integer([positive]))])),
    _ = file:delete(Ready),
    Args = [filename:join([Repo, "demo", "python", "grpc_server.py"]),
            "--adapter", "demo_adapter.DemoAdapter", "--port", "0",
            "--elixir-address", "127.0.0.1:" ++ integer_to_list(BP),
            "--snakepit-run-id", RunId, "--snakepit-instance-name", Inst]
        ++ case maps:get(init_session_per_call, Cfg, false) of
               true -> ["--init-session-per-call"];
               false -> []
           end,
    HBConf = demo_json:encode({obj, [{enabled, true}, {interval_ms, HB}, {timeout_ms, 10000},
                                     {max_missed_heartbeats, 3}, {dependent, true}]}),
    Env = [{"SNAKEPIT_READY_FILE", binary_to_list(Ready)},
           {"SNAKEPIT_HEARTBEAT_CONFIG", binary_to_list(HBConf)},
           {"SNAKEPIT_LOG_LEVEL", "info"},
           {"SNAKEPIT_PYTHON_VERSION", PyVer},
           {"GRPC_POLL_STRATEGY", "poll"},
           {"OMP_NUM_THREADS", "1"}, {"OPENBLAS_NUM_THREADS", "1"}, {"MKL_NUM_THREADS", "1"},
           {"PYTHONUNBUFFERED", "1"}],
    Port = open_port({spawn_executable, Py},
                     [{args, Args}, {env, Env}, 
                      exit_status, stderr_to_stdout, binary, {line, 8192}, use_stdio]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    Info = #{pool => Pool, worker_id => Id, os_pid => OsPid, transport => grpc, pid => self(),
             ready => false, seq => Seq, port => null},
    register_worker(Id, Info),
    St = #{cfg => Cfg, pool => Pool, id => Id, port => Port, info => Info, ready_file => Ready,
           deadline => erlang:monotonic_time(millisecond) + 60000},
    self() ! poll_ready,
    grpc_loop(St).

grpc_loop(St = #{port := Port, id := Id}) ->
    receive
        poll_ready -> grpc_loop(poll_ready(St));
        {Port, {data, {_, Line}}} ->
            log("[~s] ~s", [Id, Line]),
            grpc_loop(St);
        {Port, {exit_status, N}} ->
            log("worker ~s exited with status ~p", [Id, N]),
            grpc_down(St);
        heartbeat ->
            case {flag(quiesced), St} of
                {false, #{conn := C}} ->
                    demo_h2_client:request_async(C, <<"Heartbeat">>, demo_pb:heartbeat_request(Id),
                                                 corr_id()),
                    erlang:send_after(maps:get(heartbeat_ms, maps:get(cfg, St)), self(), heartbeat);
                _ -> ok
            end,
            grpc_loop(St);
        ping ->
            case {flag(quiesced), St} of
                {false, #{conn := C}} ->
                    demo_h2_client:request_async(C, <<"Ping">>, demo_pb:ping_request(<<"health">>),
                                                 corr_id()),
                    erlang:send_after(30000, self(), ping);
                _ -> ok
            end,
            grpc_loop(St);
        {'DOWN', _, process, C, _} when C =:= map_get(conn, St) ->
            %% connection gone while the port lives: give the port a moment to report
            register_worker(Id, (maps:get(info, St))#{ready => false}),
            receive
                {Port, {exit_status, N}} ->
                    log("worker ~s exited with status ~p", [Id, N]), grpc_down(St)
            after 2000 ->
                    catch port_close(Port), grpc_down(St)
            end;
        {stop, From} ->
            case St of #{conn := C} -> demo_h2_client:close(C); _ -> ok end,
            catch port_close(Port),
            ets:delete(demo_workers, Id),
            From ! {stopped, self()}
    end.

corr_id() -> iolist_to_binary(["c-", unique()]).

poll_ready(St = #{ready_file := F, id := Id, deadline := D}) ->
    case file:read_file(F) of
        {ok, Bin} ->
            case string:to_integer(string:trim(Bin)) of
                {P, _} when is_integer(P), P > 0 ->
                    _ = file:delete(F),
                    connect(St, P);
                _ -> erlang:send_after(20, self(), poll_ready), St
            end;
        {error, _} ->
            case erlang:monotonic_time(millisecond) > D of
                true -> log("worker ~s: no ready file after 60 s", [Id]), St;
                false -> erlang:send_after(20, self(), poll_ready), St
            end
    end.

connect(St = #{id := Id, info := Info, cfg := Cfg}, P) ->
    case demo_h2_client:start(P, Id, self()) of
        {ok, C} ->
            monitor(process, C),
            Info1 = Info#{port => P, conn => C, ready => true},
            register_worker(Id, Info1),
            erlang:send_after(maps:get(heartbeat_ms, Cfg), self(), heartbeat),
            erlang:send_after(30000, self(), ping),
            %% Subscribe to the worker's telemetry: TelemetryControl{toggle{enabled=true}}.
            demo_h2_client:request_async(C, <<"StreamTelemetry">>, <<10, 2, 8, 1>>,
                                         iolist_to_binary(["t-", Id])),
            St#{conn => C, info => Info1};
        {error, R} ->
            log("worker ~s: connect to ~p failed: ~p", [Id, P, R]),
            catch port_close(maps:get(port, St)),
            self() ! {maps:get(port, St), {exit_status, -1}},
            St
    end.

grpc_down(St = #{id := Id, cfg := Cfg, pool := Pool}) ->
    case St of #{conn := C} -> demo_h2_client:close(C); _ -> ok end,
    ets:delete(demo_workers, Id),
    _ = file:delete(maps:get(ready_file, St)),
    respawn(Cfg, Pool, grpc).

%% ---------------- pipe workers ({packet,4} JSON) ----------------
call_pipe(Pid, Command, Args, Timeout) ->
    Ref = monitor(process, Pid),
    Pid ! {call, self(), Ref, Command, Args},
    receive
        {Ref, R} -> demonitor(Ref, [flush]), R;
        {'DOWN', Ref, _, _, _} -> {error, exit, #{}}
    after Timeout -> demonitor(Ref, [flush]), {error, timeout, #{}}
    end.

pipe_init(Cfg = #{python := Py, repo := Repo}, Pool, Id, Seq) ->
    process_flag(priority, high),
    Port = open_port({spawn_executable, Py},
                     [{args, [filename:join([Repo, "demo", "python", "port_worker.py"]), "--pool", binary_to_list(Pool)]},
                      {env, [{"SNAKEPIT_WORKER_ID", binary_to_list(Id)}, {"PYTHONUNBUFFERED", "1"}]},
                      
                      {packet, 4}, binary, exit_status, use_stdio]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    register_worker(Id, #{pool => Pool, worker_id => Id, os_pid => OsPid, transport => pipe,
                          pid => self(), ready => true, seq => Seq}),
    pipe_loop(#{cfg => Cfg, pool => Pool, id => Id, port => Port, next => 1, pending => #{}}).

pipe_loop(St = #{port := Port, id := Id, next := N, pending := P}) ->
    receive
        {call, From, Ref, Cmd, Args} ->
            Body = demo_json:encode({obj, [{id, N}, {command, Cmd}, {args, Args}]}),
            T0 = os:perf_counter(nanosecond),
            U0 = os:system_time(nanosecond),
            true = port_command(Port, Body),
            pipe_loop(St#{next => N + 1,
                          pending => P#{N => {From, Ref, #{start_ns => T0, start_unix_ns => U0,
                                                           req_bytes => byte_size(Body), id => N}}}});
        {Port, {data, Bin}} ->
            T1 = os:perf_counter(nanosecond),
            case demo_json:decode(Bin) of
                {ok, M = #{<<"id">> := RId}} when is_map_key(RId, P) ->
                    {{From, Ref, Info}, P1} = maps:take(RId, P),
                    From ! {Ref, {ok, Info#{end_ns => T1, resp_bytes => byte_size(Bin), response => M}}},
                    pipe_loop(St#{pending => P1});
                _ ->
                    log("[~s] unexpected frame ~p", [Id, Bin]),
                    pipe_loop(St)
            end;
        {Port, {exit_status, S}} ->
            log("pipe worker ~s exited with status ~p", [Id, S]),
            T1 = os:perf_counter(nanosecond),
            [From ! {Ref, {error, exit, Info#{end_ns => T1}}} || {From, Ref, Info} <- maps:values(P)],
            ets:delete(demo_workers, Id),
            respawn(maps:get(cfg, St), maps:get(pool, St), pipe);
        {stop, From} ->
            catch port_close(Port),
            ets:delete(demo_workers, Id),
            From ! {stopped, self()}
    end.
