// bench/proxy.py's upstream on Node: bench.Echo/Say answers the request's bytes, served by nice-grpc over
// @grpc/grpc-js — the stack of WorkAdventure's Room API server — as the grpclib upstream does it (no
// message decoded either side). Usage: node server.mjs PORT
import { createServer } from "nice-grpc";

const same = (bytes) => bytes;
const EchoDefinition = {
  say: {
    path: "/bench.Echo/Say",
    requestStream: false,
    responseStream: false,
    requestSerialize: same,
    requestDeserialize: same,
    responseSerialize: same,
    responseDeserialize: same,
    options: {},
  },
};

const server = createServer();
server.add(EchoDefinition, { async say(request) { return request; } });
await server.listen(`127.0.0.1:${process.argv[2]}`);
process.on("SIGTERM", () => { server.forceShutdown(); process.exit(0); });
