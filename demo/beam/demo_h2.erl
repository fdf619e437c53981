%% HTTP/2 frame helpers (RFC 9113) shared by the client and the callback server.
-module(demo_h2).
-export([preface/0, frame/4, parse/1, settings/1, parse_settings/1, window_update/2,
         headers_frames/4, data_frames/4, grpc_frame/1, grpc_messages/1,
         rst_stream/2, goaway/2, ping_ack/1, percent_decode/1, status_name/1,
         conn_register/5, conn_close/2, conn_update/2, fmt_addr/1]).

-define(DATA, 0). -define(HEADERS, 1). -define(CONTINUATION, 9).

preface() -> <<"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n">>.

frame(Type, Flags, StreamId, Payload) ->
    [<<(iolist_size(Payload)):24, Type:8, Flags:8, 0:1, StreamId:31>>, Payload].

%% parse(Buf) -> {[{Type, Flags, StreamId, Payload}], Rest}
parse(Buf) -> parse(Buf, []).
parse(<<Len:24, Type:8, Flags:8, _:1, Sid:31, P:Len/binary, R/binary>>, Acc) ->
    parse(R, [{Type, Flags, Sid, P} | Acc]);
parse(R, Acc) -> {lists:reverse(Acc), R}.

settings(KVs) -> frame(4, 0, 0, [<<K:16, V:32>> || {K, V} <- KVs]).

parse_settings(P) -> [{K, V} || <<K:16, V:32>> <= P].

window_update(Sid, Inc) -> frame(8, 0, Sid, <<0:1, Inc:31>>).

rst_stream(Sid, Code) -> frame(3, 0, Sid, <<Code:32>>).

goaway(LastSid, Code) -> frame(7, 0, 0, <<0:1, LastSid:31, Code:32>>).

ping_ack(Opaque) -> frame(6, 1, 0, Opaque).

%% One header block as HEADERS + CONTINUATION frames no larger than MaxFrame.
headers_frames(Sid, Block, EndStream, MaxFrame) ->
    ES = case EndStream of true -> 1; false -> 0 end,
    case byte_size(Block) =< MaxFrame of
        true -> frame(?HEADERS, 4 bor ES, Sid, Block);
        false ->
            <<First:MaxFrame/binary, Rest/binary>> = Block,
            [frame(?HEADERS, ES, Sid, First) | continuation(Sid, Rest, MaxFrame)]
    end.

continuation(Sid, Block, MaxFrame) when byte_size(Block) =< MaxFrame ->
    [frame(?CONTINUATION, 4, Sid, Block)];
continuation(Sid, Block, MaxFrame) ->
    <<Chunk:MaxFrame/binary, Rest/binary>> = Block,
    [frame(?CONTINUATION, 0, Sid, Chunk) | continuation(Sid, Rest, MaxFrame)].

%% DATA frames for Bin (already within the flow-control window).
data_frames(Sid, Bin, EndStream, MaxFrame) when byte_size(Bin) =< MaxFrame ->
    ES = case EndStream of true -> 1; false -> 0 end,
    [frame(?DATA, ES, Sid, Bin)];
data_frames(Sid, Bin, EndStream, MaxFrame) ->
    <<Chunk:MaxFrame/binary, Rest/binary>> = Bin,
    [frame(?DATA, 0, Sid, Chunk) | data_frames(Sid, Rest, EndStream, MaxFrame)].

grpc_frame(Msg) ->
    Bin = iolist_to_binary(Msg),
    <<0, (byte_size(Bin)):32, Bin/binary>>.

grpc_messages(B) -> grpc_messages(B, []).
grpc_messages(<<_C, L:32, M:L/binary, R/binary>>, Acc) -> grpc_messages(R, [M | Acc]);
grpc_messages(_, Acc) -> lists:reverse(Acc).

percent_decode(B) -> pd(B, <<>>).
pd(<<$%, H:2/binary, R/binary>>, Acc) ->
    try binary_to_integer(H, 16) of
        C -> pd(R, <<Acc/binary, C>>)
    catch _:_ -> pd(<<H/binary, R/binary>>, <<Acc/binary, $%>>)
    end;
pd(<<C, R/binary>>, Acc) -> pd(R, <<Acc/binary, C>>);
pd(<<>>, Acc) -> Acc.

status_name(0) -> <<"OK">>;
status_name(1) -> <<"CANCELLED">>;
status_name(2) -> <<"UNKNOWN">>;
status_name(3) -> <<"INVALID_ARGUMENT">>;
status_name(4) -> <<"DEADLINE_EXCEEDED">>;
status_name(5) -> <<"NOT_FOUND">>;
status_name(6) -> <<"ALREADY_EXISTS">>;
status_name(7) -> <<"PERMISSION_DENIED">>;
status_name(8) -> <<"RESOURCE_EXHAUSTED">>;
status_name(9) -> <<"FAILED_PRECONDITION">>;
status_name(10) -> <<"ABORTED">>;
status_name(11) -> <<"OUT_OF_RANGE">>;
status_name(12) -> <<"UNIMPLEMENTED">>;
status_name(13) -> <<"INTERNAL">>;
status_name(14) -> <<"UNAVAILABLE">>;
status_name(15) -> <<"DATA_LOSS">>;
status_name(16) -> <<"UNAUTHENTICATED">>;
status_name(N) -> integer_to_binary(N).

%% ---- connection registry for `stats` (ETS demo_conns) ----
fmt_addr({ok, {Ip, Port}}) -> iolist_to_binary([inet:ntoa(Ip), $:, integer_to_list(Port)]);
fmt_addr(_) -> null.

conn_register(Key, Kind, WorkerId, Sock, OpenedNs) ->
    ets:insert(demo_conns, {Key, #{kind => Kind, worker_id => WorkerId,
                                   local => fmt_addr(inet:sockname(Sock)),
                                   peer => fmt_addr(inet:peername(Sock)),
                                   opened_mono_ns => OpenedNs, socket => Sock,
                                   closed => false, send_oct => 0, recv_oct => 0}}).

conn_update(Key, Fun) ->
    case ets:lookup(demo_conns, Key) of
        [{Key, M}] -> ets:insert(demo_conns, {Key, Fun(M)});
        [] -> ok
    end.

%% Take the final byte counts, then close (the sockets use exit_on_close=false so
%% this still works after the peer closed).
conn_close(Key, Sock) ->
    Counts = case inet:getstat(Sock, [send_oct, recv_oct]) of
                 {ok, L} -> maps:from_list(L);
                 _ -> #{}
             end,
    conn_update(Key, fun(M) -> maps:merge(M#{closed => true}, Counts) end),
    gen_tcp:close(Sock).
