// Compatibility test: the official Dapr JavaScript SDK (@dapr/dapr, HTTP protocol) used unchanged
// against statecar's state API.
//
// Run:   cd tests/sdk-js && npm ci && DAPR_HTTP_PORT=3500 node --test state.test.mjs
// Env:   DAPR_HTTP_PORT  (required) statecar API port on 127.0.0.1
//        STATE_STORE     (default "statestore") name of a transactional, etag- and TTL-capable store
//        STATECAR_SDK_TRACE=1  route the SDK through a logging proxy and print every exchange to stderr
//
// Facts about @dapr/dapr 3.18.0 (HTTP client) this test relies on, taken from its source
// (implementation/Client/HTTPClient/{HTTPClient,state,sidecar,metadata}.js):
// * Every call first waits for the sidecar by polling GET /v1.0/metadata (needs a non-empty 2xx body).
//   Nothing else is contacted: no gRPC port, no app port.
// * execute() JSON-parses any response body and returns the raw text when it is not JSON; so a 204
//   (missing key) comes back as "" from state.get(). A non-2xx/3xx status makes it throw
//   Error(JSON.stringify({ error: statusText, error_msg: <body text>, status })).
// * state.save() and state.delete() catch that error and RESOLVE with { error }; they never throw.
//   state.transaction() and state.getBulk() do throw.
// * options.concurrency / options.consistency must be the numeric StateConcurrencyEnum /
//   StateConsistencyEnum values; the SDK maps them to "first-write"/"strong"... and silently drops
//   anything else (e.g. the plain string "first-write").
// * The etag of a save item / transaction request is sent exactly as given, so it must be a string
//   on HTTP (the `{ value }` IEtag shape shown in the SDK's type docs would be sent as an object).
//   The SDK's get() does not expose the ETag header; getBulk() returns the sidecar's raw items
//   ({ key, data, etag, metadata }), which is how an SDK user obtains an etag.
// * StateSaveOptions.metadata becomes ?metadata.<k>=<v> on the save URL; per-item `metadata` is sent
//   in the body. delete() sends options.etag as If-Match and concurrency/consistency as query params.
// * Keys are put into the URL path without escaping, so this test only uses URL-safe keys.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import {
  CommunicationProtocolEnum,
  DaprClient,
  LogLevel,
  StateConcurrencyEnum,
  StateConsistencyEnum,
} from "@dapr/dapr";

const DAPR_HTTP_PORT = process.env.DAPR_HTTP_PORT;
if (!DAPR_HTTP_PORT || !/^[0-9]+$/.test(DAPR_HTTP_PORT)) {
  throw new Error("DAPR_HTTP_PORT must be set to the statecar HTTP port (e.g. DAPR_HTTP_PORT=3500)");
}
const STORE = process.env.STATE_STORE || "statestore";
const TRACE = process.env.STATECAR_SDK_TRACE === "1";

// Unique per run, URL-safe (the SDK does not escape keys).
const RUN = `sdkjs-${process.pid}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
const k = (name) => `${RUN}-${name}`;

const FIRST_WRITE_STRONG = {
  concurrency: StateConcurrencyEnum.CONCURRENCY_FIRST_WRITE,
  consistency: StateConsistencyEnum.CONSISTENCY_STRONG,
};

// The SDK logs every failed save/delete at error level; the expected failures below would make
// that noise, so SDK log lines are kept in memory and only printed when tracing.
const sdkLog = [];
const sdkLogger = {
  level: TRACE ? LogLevel.Debug : LogLevel.Error,
  service: {
    error: (...a) => (TRACE ? console.error(...a) : sdkLog.push(a.join(" "))),
    warn: (...a) => (TRACE ? console.error(...a) : sdkLog.push(a.join(" "))),
    info: (...a) => TRACE && console.error(...a),
    verbose: (...a) => TRACE && console.error(...a),
    debug: (...a) => TRACE && console.error(...a),
  },
};

/** Optional transparent logging proxy 127.0.0.1:<ephemeral> -> 127.0.0.1:DAPR_HTTP_PORT. */
async function startTraceProxy(targetPort) {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const reqBody = Buffer.concat(chunks);
      const upstream = http.request(
        { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (ures) => {
          const rchunks = [];
          ures.on("data", (c) => rchunks.push(c));
          ures.on("end", () => {
            const resBody = Buffer.concat(rchunks);
            console.error(
              `[trace] ${req.method} ${req.url}\n` +
                `[trace]   req headers: ${JSON.stringify(req.headers)}\n` +
                (reqBody.length ? `[trace]   req body: ${reqBody.toString()}\n` : "") +
                `[trace]   -> ${ures.statusCode} ${JSON.stringify(ures.headers)}\n` +
                (resBody.length ? `[trace]   res body: ${resBody.toString()}` : "[trace]   (no body)"),
            );
            res.writeHead(ures.statusCode, ures.headers);
            res.end(resBody);
          });
        },
      );
      upstream.on("error", (e) => {
        console.error(`[trace] ${req.method} ${req.url} -> upstream error ${e}`);
        res.writeHead(502);
        res.end();
      });
      upstream.end(reqBody);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/** Decodes the Error the SDK's HTTP client throws for a non-2xx answer. */
function httpErrorOf(err) {
  assert.ok(err instanceof Error, `expected an Error from the SDK, got ${String(err)}`);
  let outer;
  try {
    outer = JSON.parse(err.message);
  } catch {
    assert.fail(`SDK error is not an HTTP status error (connection problem?): ${err.message}`);
  }
  let body = outer.error_msg;
  try {
    body = JSON.parse(outer.error_msg);
  } catch {
    /* keep text */
  }
  return { status: outer.status, body };
}

function assertHttpError(err, status, errorCode) {
  const e = httpErrorOf(err);
  assert.equal(e.status, status, `HTTP status (body: ${JSON.stringify(e.body)})`);
  assert.equal(e.body?.errorCode, errorCode, `errorCode (body: ${JSON.stringify(e.body)})`);
  return e;
}

/** save()/delete() resolve with {} on success and { error } on failure. */
function assertOk(result, what) {
  assert.ok(result && typeof result === "object", `${what}: unexpected result ${JSON.stringify(result)}`);
  if (result.error) {
    assert.fail(`${what} failed: ${result.error.message}`);
  }
  assert.deepEqual(result, {}, `${what}: result`);
}

function assertRejected(result, status, errorCode, what) {
  assert.ok(result?.error, `${what}: expected { error }, got ${JSON.stringify(result)}`);
  return assertHttpError(result.error, status, errorCode);
}

let client;
let proxy;

before(async () => {
  let port = DAPR_HTTP_PORT;
  if (TRACE) {
    proxy = await startTraceProxy(Number(DAPR_HTTP_PORT));
    port = String(proxy.address().port);
    console.error(`[trace] proxy 127.0.0.1:${port} -> 127.0.0.1:${DAPR_HTTP_PORT}`);
  }
  client = new DaprClient({
    daprHost: "127.0.0.1",
    daprPort: port,
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    logger: sdkLogger,
  });
  // Polls GET /v1.0/metadata until it answers (at most ~30 s), exactly as any SDK call would.
  await client.start();
  assert.equal(client.getIsInitialized(), true);
});

after(async () => {
  await client?.stop();
  if (proxy) await new Promise((resolve) => proxy.close(resolve));
});

/** getBulk() for one key, returning the raw item. */
async function item(key) {
  const items = await client.state.getBulk(STORE, [key]);
  assert.ok(Array.isArray(items), `getBulk result is not an array: ${JSON.stringify(items)}`);
  assert.equal(items.length, 1);
  assert.equal(items[0].key, key);
  return items[0];
}

async function etagOf(key) {
  const it = await item(key);
  assert.equal(typeof it.etag, "string", `no etag for ${key}: ${JSON.stringify(it)}`);
  assert.match(it.etag, /^[0-9]+$/, "statecar etags are decimal version strings");
  return it.etag;
}

describe("sidecar endpoints used by the SDK", () => {
  test("health.isHealthy() and metadata.get()", async () => {
    assert.equal(await client.health.isHealthy(), true);
    const md = await client.metadata.get();
    assert.equal(typeof md, "object");
    assert.equal(typeof md.id, "string");
    const store = (md.components ?? []).find((c) => c.name === STORE);
    assert.ok(store, `metadata.components lists ${STORE}: ${JSON.stringify(md.components)}`);
    assert.match(store.type, /^state\./);
  });

  test("metadata.set() then metadata.get().extended", async () => {
    const attr = `${RUN}-attr`;
    assert.equal(await client.metadata.set(attr, "bar"), true);
    const md = await client.metadata.get();
    assert.equal(md.extended?.[attr], "bar");
  });
});

describe("save + get", () => {
  const values = {
    object: { name: "Bruce Wayne", age: 42, tags: ["a", "b"], nested: { ok: true, none: null } },
    array: [1, "two", { three: 3 }],
    string: "hello world",
    unicode: "héllo ✓ <&> \"quoted\" \\ back",
    jsonLooking: '{"a":1}',
    numericString: "123",
    integer: 12345,
    negative: -7,
    zero: 0,
    float: 3.25,
    boolTrue: true,
    boolFalse: false,
    nul: null,
  };

  test("values round-trip through save() and get()", async () => {
    const items = Object.entries(values).map(([name, value]) => ({ key: k(`v-${name}`), value }));
    assertOk(await client.state.save(STORE, items), "multi-item save");
    for (const [name, value] of Object.entries(values)) {
      assert.deepEqual(await client.state.get(STORE, k(`v-${name}`)), value, `value ${name}`);
    }
  });

  test("overwrite without etag (last-write default) replaces the value and bumps the etag", async () => {
    const key = k("overwrite");
    assertOk(await client.state.save(STORE, [{ key, value: { v: 1 } }]), "save 1");
    assert.equal(await etagOf(key), "1");
    assertOk(await client.state.save(STORE, [{ key, value: { v: 2 } }]), "save 2");
    assert.deepEqual(await client.state.get(STORE, key), { v: 2 });
    assert.equal(await etagOf(key), "2");
  });

  test("get() of a missing key returns the empty 204 body as \"\"", async () => {
    assert.equal(await client.state.get(STORE, k("never-written")), "");
  });

  test("get() with consistency option", async () => {
    const key = k("get-strong");
    assertOk(await client.state.save(STORE, [{ key, value: "s" }]), "save");
    assert.equal(
      await client.state.get(STORE, key, { consistency: StateConsistencyEnum.CONSISTENCY_STRONG }),
      "s",
    );
    assert.equal(
      await client.state.get(STORE, key, { consistency: StateConsistencyEnum.CONSISTENCY_EVENTUAL }),
      "s",
    );
  });

  test("unknown store: save() resolves with an error, get() throws", async () => {
    const missing = `${RUN}-nostore`;
    assertRejected(
      await client.state.save(missing, [{ key: k("x"), value: 1 }]),
      400,
      "ERR_STATE_STORE_NOT_FOUND",
      "save to unknown store",
    );
    await assert.rejects(client.state.get(missing, k("x")), (err) => {
      assertHttpError(err, 400, "ERR_STATE_STORE_NOT_FOUND");
      return true;
    });
  });
});

describe("etags and concurrency options on save", () => {
  test("first-write + strong with the current etag succeeds; a stale etag is rejected with 409", async () => {
    const key = k("etag");
    assertOk(await client.state.save(STORE, [{ key, value: { step: 1 } }]), "initial save");
    const e1 = await etagOf(key);
    assert.equal(e1, "1");

    assertOk(
      await client.state.save(STORE, [{ key, value: { step: 2 }, etag: e1, options: FIRST_WRITE_STRONG }]),
      "save with current etag",
    );
    const e2 = await etagOf(key);
    assert.equal(e2, "2");

    // Stale etag with the same options.
    assertRejected(
      await client.state.save(STORE, [{ key, value: { step: 3 }, etag: e1, options: FIRST_WRITE_STRONG }]),
      409,
      "ERR_STATE_SAVE",
      "save with stale etag (first-write)",
    );
    // Stale etag without options (default concurrency).
    assertRejected(
      await client.state.save(STORE, [{ key, value: { step: 4 }, etag: e1 }]),
      409,
      "ERR_STATE_SAVE",
      "save with stale etag (no options)",
    );
    assert.deepEqual(await client.state.get(STORE, key), { step: 2 }, "value unchanged");
    assert.equal(await etagOf(key), e2, "etag unchanged");
  });

  test("first-write without etag: inserts a new key, is rejected (409) on an existing key", async () => {
    const key = k("first-write");
    assertOk(
      await client.state.save(STORE, [{ key, value: "first", options: FIRST_WRITE_STRONG }]),
      "first-write insert",
    );
    assert.equal(await client.state.get(STORE, key), "first");
    // This also proves the SDK really transmitted concurrency=first-write.
    assertRejected(
      await client.state.save(STORE, [{ key, value: "second", options: FIRST_WRITE_STRONG }]),
      409,
      "ERR_STATE_SAVE",
      "first-write without etag on existing key",
    );
    assert.equal(await client.state.get(STORE, key), "first", "value unchanged");
  });

  test("last-write + eventual options are accepted", async () => {
    const key = k("last-write");
    const opts = {
      concurrency: StateConcurrencyEnum.CONCURRENCY_LAST_WRITE,
      consistency: StateConsistencyEnum.CONSISTENCY_EVENTUAL,
    };
    assertOk(await client.state.save(STORE, [{ key, value: 1, options: opts }]), "save 1");
    assertOk(await client.state.save(STORE, [{ key, value: 2, options: opts }]), "save 2");
    assert.equal(await client.state.get(STORE, key), 2);
  });

  test("etag for a key that does not exist is rejected with 409", async () => {
    const key = k("etag-missing");
    assertRejected(
      await client.state.save(STORE, [{ key, value: 1, etag: "1" }]),
      409,
      "ERR_STATE_SAVE",
      "save with etag on missing key",
    );
    assert.equal(await client.state.get(STORE, key), "");
  });

  test("a non-numeric etag is rejected with 400", async () => {
    const key = k("etag-bad");
    assertOk(await client.state.save(STORE, [{ key, value: 1 }]), "save");
    assertRejected(
      await client.state.save(STORE, [{ key, value: 2, etag: "not-a-number" }]),
      400,
      "ERR_STATE_SAVE",
      "save with non-numeric etag",
    );
    assert.equal(await client.state.get(STORE, key), 1);
  });
});

describe("getBulk", () => {
  test("returns one item per key in request order, missing keys carry only `key`", async () => {
    const k1 = k("bulk-1");
    const k2 = k("bulk-2");
    const missing = k("bulk-missing");
    assertOk(
      await client.state.save(STORE, [
        { key: k1, value: { n: 1, s: "one" } },
        { key: k2, value: "two" },
      ]),
      "save",
    );
    assertOk(await client.state.save(STORE, [{ key: k2, value: "two!" }]), "update k2");

    const items = await client.state.getBulk(STORE, [k1, k2, missing]);
    assert.deepEqual(items, [
      { key: k1, data: { n: 1, s: "one" }, etag: "1" },
      { key: k2, data: "two!", etag: "2" },
      { key: missing },
    ]);

    const reversed = await client.state.getBulk(STORE, [missing, k2, k1], { parallelism: 1 });
    assert.deepEqual(
      reversed.map((i) => i.key),
      [missing, k2, k1],
    );
    assert.deepEqual(reversed[2].data, { n: 1, s: "one" });
  });

  test("empty key list returns []", async () => {
    assert.deepEqual(await client.state.getBulk(STORE, []), []);
  });

  test("unknown store throws", async () => {
    await assert.rejects(client.state.getBulk(`${RUN}-nostore`, [k("x")]), (err) => {
      assertHttpError(err, 400, "ERR_STATE_STORE_NOT_FOUND");
      return true;
    });
  });
});

describe("delete", () => {
  test("delete() then get() returns \"\" and getBulk() has no data", async () => {
    const key = k("del");
    assertOk(await client.state.save(STORE, [{ key, value: { x: 1 } }]), "save");
    assertOk(await client.state.delete(STORE, key), "delete");
    assert.equal(await client.state.get(STORE, key), "");
    assert.deepEqual(await item(key), { key });
  });

  test("delete() of a key that never existed succeeds", async () => {
    assertOk(await client.state.delete(STORE, k("del-never")), "delete missing");
  });

  test("delete() with etag: stale etag is rejected (409), current etag deletes", async () => {
    const key = k("del-etag");
    assertOk(await client.state.save(STORE, [{ key, value: "v1" }]), "save 1");
    const e1 = await etagOf(key);
    assertOk(await client.state.save(STORE, [{ key, value: "v2" }]), "save 2");
    const e2 = await etagOf(key);
    assert.notEqual(e1, e2);

    assertRejected(
      await client.state.delete(STORE, key, { etag: e1, ...FIRST_WRITE_STRONG }),
      409,
      "ERR_STATE_DELETE",
      "delete with stale etag",
    );
    assert.equal(await client.state.get(STORE, key), "v2", "value unchanged");

    assertOk(await client.state.delete(STORE, key, { etag: e2, ...FIRST_WRITE_STRONG }), "delete with etag");
    assert.equal(await client.state.get(STORE, key), "");

    // The version restarts after a delete.
    assertOk(await client.state.save(STORE, [{ key, value: "v3" }]), "re-create");
    assert.equal(await etagOf(key), "1");
  });

  test("delete() with an etag of a missing key is rejected (409)", async () => {
    assertRejected(
      await client.state.delete(STORE, k("del-etag-missing"), { etag: "1" }),
      409,
      "ERR_STATE_DELETE",
      "delete missing key with etag",
    );
  });
});

describe("transaction", () => {
  test("upserts and deletes are applied (default metadata=null, options={})", async () => {
    const kNew = k("tx-new");
    const kUpd = k("tx-upd");
    const kDel = k("tx-del");
    assertOk(
      await client.state.save(STORE, [
        { key: kUpd, value: { v: "old" } },
        { key: kDel, value: "to be deleted" },
      ]),
      "setup",
    );
    const eUpd = await etagOf(kUpd);

    const res = await client.state.transaction(STORE, [
      { operation: "upsert", request: { key: kNew, value: { created: true, n: [1, 2] } } },
      { operation: "upsert", request: { key: kUpd, value: { v: "new" }, etag: eUpd, options: FIRST_WRITE_STRONG } },
      { operation: "delete", request: { key: kDel } },
    ]);
    assert.equal(res, undefined);

    assert.deepEqual(await client.state.get(STORE, kNew), { created: true, n: [1, 2] });
    assert.deepEqual(await client.state.get(STORE, kUpd), { v: "new" });
    assert.equal(await client.state.get(STORE, kDel), "");
    assert.deepEqual(await client.state.getBulk(STORE, [kNew, kUpd, kDel]), [
      { key: kNew, data: { created: true, n: [1, 2] }, etag: "1" },
      { key: kUpd, data: { v: "new" }, etag: String(Number(eUpd) + 1) },
      { key: kDel },
    ]);
  });

  test("operations on the same key are applied in order", async () => {
    const gone = k("tx-order-gone");
    const kept = k("tx-order-kept");
    await client.state.transaction(
      STORE,
      [
        { operation: "upsert", request: { key: gone, value: 1 } },
        { operation: "delete", request: { key: gone } },
        { operation: "delete", request: { key: kept } },
        { operation: "upsert", request: { key: kept, value: "last" } },
      ],
      { note: "tx-level metadata" },
    );
    assert.equal(await client.state.get(STORE, gone), "");
    assert.equal(await client.state.get(STORE, kept), "last");
  });

  test("delete with etag inside a transaction", async () => {
    const key = k("tx-del-etag");
    assertOk(await client.state.save(STORE, [{ key, value: "x" }]), "save");
    const e = await etagOf(key);
    await client.state.transaction(STORE, [{ operation: "delete", request: { key, etag: e } }]);
    assert.equal(await client.state.get(STORE, key), "");
  });

  test("a stale etag makes transaction() throw and nothing is applied", async () => {
    const kA = k("tx-conflict-a");
    const kB = k("tx-conflict-b");
    assertOk(await client.state.save(STORE, [{ key: kB, value: "b1" }]), "save b1");
    const stale = await etagOf(kB);
    assertOk(await client.state.save(STORE, [{ key: kB, value: "b2" }]), "save b2");

    await assert.rejects(
      client.state.transaction(STORE, [
        { operation: "upsert", request: { key: kA, value: "a" } },
        { operation: "upsert", request: { key: kB, value: "b3", etag: stale } },
      ]),
      (err) => {
        // statecar: 409 (Dapr itself answers 500 for any transaction failure).
        assertHttpError(err, 409, "ERR_STATE_TRANSACTION");
        return true;
      },
    );
    assert.equal(await client.state.get(STORE, kA), "", "first op not applied (atomic)");
    assert.equal(await client.state.get(STORE, kB), "b2", "value unchanged");
  });

  test("unknown operation makes transaction() throw 400", async () => {
    await assert.rejects(
      client.state.transaction(STORE, [{ operation: "merge", request: { key: k("tx-bad-op"), value: 1 } }]),
      (err) => {
        assertHttpError(err, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION");
        return true;
      },
    );
  });

  test("empty operation list succeeds", async () => {
    assert.equal(await client.state.transaction(STORE, []), undefined);
  });
});

describe("ttlInSeconds metadata", () => {
  async function waitGone(key, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await client.state.get(STORE, key);
      if (v === "") return;
      if (Date.now() > deadline) assert.fail(`${key} did not expire within ${timeoutMs} ms (still ${JSON.stringify(v)})`);
      await sleep(200);
    }
  }

  test("save option metadata, per-item metadata and transaction metadata expire keys", async () => {
    const viaOption = k("ttl-option");
    const viaItem = k("ttl-item");
    const viaTx = k("ttl-tx");
    const longLived = k("ttl-long");
    const noTtl = k("ttl-none");

    // StateSaveOptions.metadata -> ?metadata.ttlInSeconds=2 applies to all items of the request.
    assertOk(
      await client.state.save(STORE, [{ key: viaOption, value: "o" }], { metadata: { ttlInSeconds: "2" } }),
      "save with options.metadata",
    );
    // Per-item metadata in the body.
    assertOk(
      await client.state.save(STORE, [
        { key: viaItem, value: "i", metadata: { ttlInSeconds: "2" } },
        { key: longLived, value: "l", metadata: { ttlInSeconds: "3600" } },
        { key: noTtl, value: "n" },
      ]),
      "save with item metadata",
    );
    await client.state.transaction(STORE, [
      { operation: "upsert", request: { key: viaTx, value: "t", metadata: { ttlInSeconds: "2" } } },
    ]);
    // Present right after the write, gone a little later.
    assert.deepEqual(
      await Promise.all([viaOption, viaItem, viaTx].map((key) => client.state.get(STORE, key))),
      ["o", "i", "t"],
    );

    // statecar reports the expiry in bulk items as metadata.ttlExpireTime (RFC 3339).
    const items = await client.state.getBulk(STORE, [longLived, noTtl]);
    assert.equal(items[0].data, "l");
    const expiry = Date.parse(items[0].metadata?.ttlExpireTime);
    assert.ok(
      Number.isFinite(expiry) && Math.abs(expiry - (Date.now() + 3600_000)) < 120_000,
      `ttlExpireTime ~ now+1h: ${JSON.stringify(items[0])}`,
    );
    assert.deepEqual(items[1], { key: noTtl, data: "n", etag: "1" });

    await Promise.all([waitGone(viaOption, 8000), waitGone(viaItem, 8000), waitGone(viaTx, 8000)]);
    assert.deepEqual(await item(viaItem), { key: viaItem });
    assert.equal(await client.state.get(STORE, longLived), "l");
    assert.equal(await client.state.get(STORE, noTtl), "n");
  });

  test("non-integer ttlInSeconds is rejected with 400", async () => {
    assertRejected(
      await client.state.save(STORE, [{ key: k("ttl-bad"), value: 1, metadata: { ttlInSeconds: "soon" } }]),
      400,
      "ERR_STATE_SAVE",
      "save with bad ttl",
    );
  });
});
