// WorkAdventure's Room API client stack against room-gateway: nice-grpc over @grpc/grpc-js, with the code
// ts-proto generates from protos/roomApi/room-api.proto (into ./gen, by ../generate.py) — the way
// @workadventure/room-api-client is built. Run by tests/compat/workadventure/test_workadventure_node_client.py:
//
//   ROOM_API_KEY=… LIMITED_KEY=… GATEWAY_HOST=127.0.0.1 GATEWAY_PORT=50051 ROOM=… npx tsx client.ts
//
// GATEWAY_HOST=https://127.0.0.1 switches to TLS, as the vendor's client does (or port 443); trust a test
// certificate with GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (grpc-js ignores NODE_EXTRA_CA_CERTS).
// Prints one JSON object with what each call returned, for the test to check.

import { ChannelCredentials, ClientError, createChannel, createClient, Metadata } from "nice-grpc";
import type { Channel } from "nice-grpc";
import { Value } from "./gen/google/protobuf/struct";
import { RoomApiDefinition } from "./gen/roomApi/room-api";
import type { RoomApiClient } from "./gen/roomApi/room-api";

const TIMEOUT_MS = 10_000;
const channels: Channel[] = [];

// The vendor's createRoomApiClient(apiKey, host, port), unchanged but for keeping the channel to close it.
function createRoomApiClient(apiKey: string, host = "room-api.workadventu.re", port = 443): RoomApiClient {
  const channel = createChannel(
    `${host}:${port}`,
    port === 443 || host.startsWith("https://") ? ChannelCredentials.createSsl() : ChannelCredentials.createInsecure(),
  );
  channels.push(channel);
  return createClient(RoomApiDefinition, channel, {
    "*": { metadata: new Metadata({ "X-API-Key": apiKey }) },
  });
}

function env(name: string): string {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
}

async function failure(call: () => Promise<unknown>): Promise<{ code: number; details: string } | null> {
  try {
    await call();
    return null;
  } catch (error) {
    if (error instanceof ClientError) return { code: error.code, details: error.details };
    throw error;
  }
}

// Repeats `write` until `listen` has received something: a listener is subscribed some time after its call
// starts, and only what is written after that reaches it.
async function firstWhileWriting<T>(listen: AsyncIterable<T>, write: (round: number) => Promise<void>): Promise<T> {
  const iterator = listen[Symbol.asyncIterator]();
  const first = iterator.next();
  let received = false;
  const writer = (async () => {
    for (let round = 1; !received && round <= 50; round++) {
      await write(round);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  const result = await first;
  received = true;
  await writer;
  await iterator.return?.(); // cancels the call
  if (result.done) throw new Error("the stream ended before a message arrived");
  return result.value;
}

async function main(): Promise<void> {
  const host = env("GATEWAY_HOST");
  const port = Number(env("GATEWAY_PORT"));
  const room = env("ROOM");
  const client = createRoomApiClient(env("ROOM_API_KEY"), host, port);
  const signal = AbortSignal.timeout(TIMEOUT_MS);
  const results: Record<string, unknown> = {};

  // readVariable: an unset variable is an empty Value (undefined once unwrapped).
  const unset = await client.readVariable({ room, name: "never-set" }, { signal });
  results.readUnset = Value.unwrap(unset) === undefined ? "<undefined>" : Value.unwrap(unset);

  // saveVariable then readVariable: any JSON value, the room created on the way.
  await client.saveVariable({ room, name: "doors", value: "initial" }, { signal });
  const saved = { open: true, count: 3, tags: ["a", "b"], nothing: null, ratio: 0.5 };
  await client.saveVariable({ room, name: "shared", value: saved }, { signal });
  results.readSaved = Value.unwrap(await client.readVariable({ room, name: "shared" }, { signal }));

  // listenVariable: only what changes after the call, never the current value ("initial").
  const changed = await firstWhileWriting(client.listenVariable({ room, name: "doors" }, { signal }), (round) =>
    client.saveVariable({ room, name: "doors", value: { round } }, { signal }).then(() => undefined),
  );
  results.listenVariable = Value.unwrap(changed);

  // broadcastEvent (targetUserIds accepted) heard by listenToEvent, without a senderId.
  const event = await firstWhileWriting(client.listenToEvent({ room, name: "ring" }, { signal }), (round) =>
    client.broadcastEvent({ room, name: "ring", data: { round, who: "api" }, targetUserIds: [1, 2] }, { signal }),
  );
  results.listenToEvent = { data: event.data, senderIdPresent: event.senderId !== undefined };

  // The vendor's errors.
  results.wrongKey = await failure(() =>
    createRoomApiClient("a-key-that-is-not-configured", host, port).readVariable({ room, name: "shared" }, { signal }),
  );
  results.missingKey = await failure(() =>
    createRoomApiClient("", host, port).readVariable({ room, name: "shared" }, { signal }),
  );
  results.otherRoom = await failure(() =>
    createRoomApiClient(env("LIMITED_KEY"), host, port).readVariable({ room, name: "shared" }, { signal }),
  );

  process.stdout.write(JSON.stringify(results) + "\n");
}

main()
  .catch((error) => {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const channel of channels) channel.close();
  });
