%% Minimal protobuf codec: varints, length-delimited fields, maps as repeated
%% entries (key = 1, value = 2), and the few snakepit.bridge messages the demo uses.
-module(demo_pb).
-export([varint/1, decode_varint/1, field/3, decode/1, get/3, get_all/2,
         map_entries/1, decode_map/2, timestamp_now/0,
         execute_tool_request/5, decode_execute_tool_response/1,
         decode_tool_chunk/1, ping_request/1, heartbeat_request/1]).

-define(STRING_VALUE_URL, <<"type.googleapis.com/google.protobuf.StringValue">>).

varint(N) when N < 0 -> varint(N + (1 bsl 64));
varint(N) when N < 128 -> <<N>>;
varint(N) -> <<1:1, (N band 127):7, (varint(N bsr 7))/binary>>.

decode_varint(B) -> decode_varint(B, 0, 0).
decode_varint(<<1:1, V:7, R/binary>>, Shift, Acc) -> decode_varint(R, Shift + 7, Acc bor (V bsl Shift));
decode_varint(<<0:1, V:7, R/binary>>, Shift, Acc) -> {Acc bor (V bsl Shift), R}.

%% field(Num, Type, Value) -> iodata; default values of scalars are omitted (proto3).
field(_N, string, <<>>) -> [];
field(_N, bytes, <<>>) -> [];
field(N, T, V) when T =:= string; T =:= bytes; T =:= message ->
    Bin = iolist_to_binary(V),
    [varint((N bsl 3) bor 2), varint(byte_size(Bin)), Bin];
field(N, message_always, V) ->
    Bin = iolist_to_binary(V),
    [varint((N bsl 3) bor 2), varint(byte_size(Bin)), Bin];
field(_N, bool, false) -> [];
field(N, bool, true) -> [varint(N bsl 3), 1];
field(_N, int, 0) -> [];
field(N, int, I) -> [varint(N bsl 3), varint(I)].

%% decode(Bin) -> [{FieldNum, Value}] in wire order; Value is an integer for
%% varint/fixed fields and a binary for length-delimited ones.
decode(B) -> decode(B, []).
decode(<<>>, Acc) -> lists:reverse(Acc);
decode(B, Acc) ->
    {Key, R} = decode_varint(B),
    N = Key bsr 3,
    case Key band 7 of
        0 -> {V, R1} = decode_varint(R), decode(R1, [{N, V} | Acc]);
        1 -> <<V:64/little, R1/binary>> = R, decode(R1, [{N, V} | Acc]);
        2 -> {L, R1} = decode_varint(R), <<V:L/binary, R2/binary>> = R1,
             decode(R2, [{N, V} | Acc]);
        5 -> <<V:32/little, R1/binary>> = R, decode(R1, [{N, V} | Acc])
    end.

get(Fields, N, Default) ->
    case lists:keyfind(N, 1, lists:reverse(Fields)) of
        {N, V} -> V;
        false -> Default
    end.

get_all(Fields, N) -> [V || {K, V} <- Fields, K =:= N].

%% map entries for a map field: [{Key, Value}] -> list of entry messages
map_entries(KVs) ->
    [iolist_to_binary([field(1, string, K), field(2, bytes, V)]) || {K, V} <- KVs].

decode_map(Fields, N) ->
    [begin E = decode(Bin), {get(E, 1, <<>>), get(E, 2, <<>>)} end || Bin <- get_all(Fields, N)].

timestamp_now() ->
    Ns = os:system_time(nanosecond),
    iolist_to_binary([field(1, int, Ns div 1000000000), field(2, int, Ns rem 1000000000)]).

any_json(Json) ->
    iolist_to_binary([field(1, string, ?STRING_VALUE_URL), field(2, bytes, Json)]).

%% Params: [{Name, JsonBin}], Meta: [{K, V}], BinParams: [{Name, Bin}]
execute_tool_request(Session, Tool, Params, Meta, BinParams) ->
    [field(1, string, Session), field(2, string, Tool),
     [field(3, message_always, [field(1, string, K), field(2, message_always, any_json(V))])
      || {K, V} <- Params],
     [field(4, message_always, E) || E <- map_entries(Meta)],
     [field(6, message_always, E) || E <- map_entries(BinParams)]].

decode_execute_tool_response(Bin) ->
    F = decode(Bin),
    #{success => get(F, 1, 0) =:= 1,
      result => get(F, 2, <<>>),
      error_message => get(F, 3, <<>>),
      metadata => decode_map(F, 4),
      execution_time_ms => get(F, 5, 0),
      binary_result_bytes => byte_size(get(F, 6, <<>>))}.

decode_tool_chunk(Bin) ->
    F = decode(Bin),
    #{chunk_id => get(F, 1, <<>>), data_bytes => byte_size(get(F, 2, <<>>)),
      is_final => get(F, 3, 0) =:= 1}.

ping_request(Msg) -> field(1, string, Msg).

heartbeat_request(Session) ->
    [field(1, string, Session), field(2, message_always, timestamp_now())].
