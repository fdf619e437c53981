%% Entry point of the demo deployment: a Snakepit-shaped BEAM.
%% erl -noshell -pa demo/_build/ebin -run demo_app main -extra --python .venv/bin/python ...
%% Control: one Erlang term per line on stdin, one JSON reply line on stdout.
-module(demo_app).
-export([main/0, main/1]).

main() -> main(init:get_plain_arguments()).

main(_RunArgs) ->
    %% -run passes its own args; the flags come from -extra (plain arguments)
    Args = init:get_plain_arguments(),
    logger_to_stderr(),
    Opts = parse(Args, #{python => "python3", grpc_workers => 2, pipe_workers => 1,
                         instance => "demo", beam_port => 0, heartbeat_ms => 2000, autoload => 0,
                         init_session_per_call => false}),
    ets:new(demo_workers, [named_table, public, set]),
    ets:new(demo_conns, [named_table, public, set]),
    ets:new(demo_flags, [named_table, public, set]),
    {ok, BeamPort} = demo_grpc_server:start(maps:get(beam_port, Opts)),
    Python = resolve_python(maps:get(python, Opts)),
    Cfg = #{python => Python, repo => repo_root(), beam_port => BeamPort, run_id => run_id(),
            instance => maps:get(instance, Opts), heartbeat_ms => maps:get(heartbeat_ms, Opts),
            pyver => python_version(Python),
            init_session_per_call => maps:get(init_session_per_call, Opts)},
    [demo_worker:start(Cfg, <<"default">>, grpc, I) || I <- lists:seq(1, maps:get(grpc_workers, Opts))],
    [demo_worker:start(Cfg, <<"legacy">>, pipe, I) || I <- lists:seq(1, maps:get(pipe_workers, Opts))],
    St = #{opts => Opts, beam_port => BeamPort, autoload => undefined},
    St1 = case maps:get(autoload, Opts) of
              R when R > 0 -> St#{autoload => start_autoload(R)};
              _ -> St
          end,
    control_loop(St1).

logger_to_stderr() ->
    _ = logger:remove_handler(default),
    _ = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    ok.

parse(["--python", P | R], O) -> parse(R, O#{python => P});
parse(["--grpc-workers", N | R], O) -> parse(R, O#{grpc_workers => list_to_integer(N)});
parse(["--pipe-workers", N | R], O) -> parse(R, O#{pipe_workers => list_to_integer(N)});
parse(["--instance-name", N | R], O) -> parse(R, O#{instance => N});
parse(["--beam-port", N | R], O) -> parse(R, O#{beam_port => list_to_integer(N)});
parse(["--heartbeat-ms", N | R], O) -> parse(R, O#{heartbeat_ms => list_to_integer(N)});
parse(["--autoload", N | R], O) -> parse(R, O#{autoload => list_to_integer(N)});
%% Workers call InitializeSession back on every tool call, as real Snakepit workers do.
parse(["--init-session-per-call" | R], O) -> parse(R, O#{init_session_per_call => true});
parse([Other | R], O) -> io:format(standard_error, "ignoring argument ~s~n", [Other]), parse(R, O);
parse([], O) -> O.

resolve_python(P) ->
    case lists:member($/, P) of
        true -> filename:absname(P);
        false ->
            case os:find_executable(P) of
                false -> P;
                Abs -> Abs
            end
    end.

repo_root() ->
    %% <repo>/demo/_build/ebin/demo_app.beam
    Beam = filename:absname(code:which(?MODULE)),
    filename:dirname(filename:dirname(filename:dirname(filename:dirname(Beam)))).

run_id() ->
    Alphabet = "0123456789abcdefghijklmnopqrstuvwxyz",
    [lists:nth(rand:uniform(36), Alphabet) || _ <- lists:seq(1, 7)].

python_version(Py) ->
    Out = os:cmd(Py ++ " -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' 2>/dev/null"),
    case string:trim(Out) of
        "" -> "3";
        V -> V
    end.

reply(Pairs) ->
    io:put_chars(standard_io, [demo_json:encode({obj, Pairs}), $\n]).

control_loop(St) ->
    case io:read(standard_io, '') of
        {ok, Term} ->
            St1 = try command(Term, St)
                  catch C:R:Stack ->
                          io:format(standard_error, "command ~p failed: ~p:~p ~p~n", [Term, C, R, Stack]),
                          reply([{reply, error}, {message, iolist_to_binary(io_lib:format("~p", [R]))}]),
                          St
                  end,
            control_loop(St1);
        eof -> shutdown(St, false);
        {error, E} ->
            reply([{reply, error}, {message, iolist_to_binary(io_lib:format("bad term: ~p", [E]))}]),
            control_loop(St)
    end.

workers() ->
    Ws = [W || {_, W} <- ets:tab2list(demo_workers)],
    lists:sort(fun(A, B) -> {maps:get(pool, A), maps:get(seq, A)} =< {maps:get(pool, B), maps:get(seq, B)} end, Ws).

command(status, St = #{opts := O, beam_port := BP}) ->
    Ws = workers(),
    Ready = length([W || W = #{transport := grpc, ready := true} <- Ws]) =:= maps:get(grpc_workers, O)
        andalso length([W || W = #{transport := pipe} <- Ws]) =:= maps:get(pipe_workers, O),
    WJ = [case W of
              #{transport := grpc} ->
                  {obj, [{pool, P}, {worker_id, Id}, {os_pid, Pid}, {port, maps:get(port, W)},
                         {transport, grpc}]};
              #{transport := pipe} ->
                  {obj, [{pool, P}, {worker_id, Id}, {os_pid, Pid}, {transport, pipe}]}
          end || W = #{pool := P, worker_id := Id, os_pid := Pid} <- Ws],
    reply([{reply, status}, {ready, Ready}, {beam_pid, list_to_integer(os:getpid())},
           {beam_port, BP}, {workers, WJ}]),
    St;
command({load, Map}, St) when is_map(Map) ->
    {Calls, Ok, Err} = demo_load:run(Map),
    reply([{reply, load}, {calls, Calls}, {ok, Ok}, {error, Err}]),
    St;
command({stats, Path}, St) ->
    N = write_stats(Path),
    reply([{reply, stats}, {connections, N}]),
    St;
command(quiesce, St) ->
    demo_worker:set_flag(quiesced, true),
    St1 = stop_autoload(St),
    reply([{reply, quiesce}]),
    St1;
command({kill_worker, Id0}, St) ->
    Id = iolist_to_binary(Id0),
    case ets:lookup(demo_workers, Id) of
        [{_, #{os_pid := Pid}}] ->
            os:cmd("kill -9 " ++ integer_to_list(Pid)),
            reply([{reply, kill_worker}, {os_pid, Pid}]);
        [] ->
            reply([{reply, kill_worker}, {os_pid, null}, {error, <<"no such worker">>}])
    end,
    St;
command(stop, St) -> shutdown(St, true);
command({stop, Path}, St) -> shutdown(St, {stats, Path});
command(Other, St) ->
    reply([{reply, error}, {message, iolist_to_binary(io_lib:format("unknown command ~p", [Other]))}]),
    St.

write_stats(Path) ->
    Conns = lists:sort(fun(A, B) -> maps:get(opened_mono_ns, A) =< maps:get(opened_mono_ns, B) end,
                       [M || {_, M} <- ets:tab2list(demo_conns)]),
    Lines = [stats_line(C) || C <- Conns],
    ok = file:write_file(Path, [[L, $\n] || L <- Lines]),
    length(Lines).

stats_line(C = #{kind := Kind, closed := Closed}) ->
    {Send, Recv} = case Closed of
                       true -> {maps:get(send_oct, C), maps:get(recv_oct, C)};
                       false ->
                           case inet:getstat(maps:get(socket, C), [send_oct, recv_oct]) of
                               {ok, L} -> {proplists:get_value(send_oct, L), proplists:get_value(recv_oct, L)};
                               _ -> {maps:get(send_oct, C), maps:get(recv_oct, C)}
                           end
                   end,
    demo_json:encode({obj, [{kind, Kind}, {worker_id, maps:get(worker_id, C)}, {local, maps:get(local, C)},
                            {peer, maps:get(peer, C)}, {send_oct, Send}, {recv_oct, Recv},
                            {opened_mono_ns, maps:get(opened_mono_ns, C)}, {closed, Closed}]}).

%% The background load of `cargo xtask demo`: the default mix plus the ML tools, so
%% the agent's ML rules (demo/agent.toml) have calls to turn into ML events.
start_autoload(Rate) ->
    Mix = maps:merge(demo_load:default_mix(), #{ml_infer => 2, ml_train => 1}),
    spawn(fun() -> demo_load:run(#{rate => Rate, duration_ms => infinity, concurrency => 4,
                                    mix => Mix}) end).

stop_autoload(St = #{autoload := undefined}) -> St;
stop_autoload(St = #{autoload := Pid}) -> Pid ! stop, St#{autoload => undefined}.

shutdown(St, Reply) ->
    demo_worker:set_flag(stopping, true),
    demo_worker:set_flag(quiesced, true),
    stop_autoload(St),
    demo_worker:stop_all(),
    demo_grpc_server:stop(),
    case Reply of
        true -> reply([{reply, stop}]);
        %% Every connection is closed now: its final counts are the ones taken
        %% just before gen_tcp:close/1.
        {stats, Path} -> reply([{reply, stop}, {connections, write_stats(Path)}]);
        false -> ok
    end,
    timer:sleep(100),
    erlang:halt(0).
