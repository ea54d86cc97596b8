// A recording starter in Node: pop a fresh resourceId from a ridpool pool, call Agora's `start` with it, and
// report how it went. The FCALLs and the wait loop are the README's ("Any language: FCALL ridpool_pop").
//
//   npm ci && node starter.js POOL [CNAME]      (CNAME for a pool of named channels; none for a template pool)
//
// Environment: RIDPOOL_REDIS_URL (redis://:PASSWORD@HOST:6379/0), RIDPOOL_PREFIX (the daemon's key_prefix),
// AGORA_BASE_URL, AGORA_CUSTOMER_ID, AGORA_CUSTOMER_SECRET, AGORA_MODE (individual, mix or web) and
// AGORA_CLIENT_REQUEST (start's clientRequest as JSON: Agora needs your token, recordingConfig, storageConfig).
// Prints one JSON line; exits 0 when started, 3 when the pool had nothing fresh enough, 1 otherwise.
import { createClient } from "redis";

const env = process.env;
const MIN_TTL_MS = 10_000; // an ID with less life left is of no use: start must reach Agora before it expires
const WAIT_MS = 2_000;

// The pool's keys, as pool/keys.py names them: a named channel's queue has `%` and `:` percent-encoded.
function poolKeys(prefix, pool, cname) {
  const tag = `${prefix}:{${pool}}`;
  const queue = cname ? `${tag}:q:${cname.replaceAll("%", "%25").replaceAll(":", "%3A")}` : `${tag}:q`;
  return {
    meta: `${tag}:meta`,
    stats: `${tag}:stats`,
    starts: `${tag}:starts`,
    ann: `${tag}:ann`,
    changes: `${tag}:changes`,
    queue,
    ready: `${queue}:ready`,
  };
}

// FCALL ridpool_pop; between tries, BLPOP on the ready list (a token wakes us, it reserves nothing). Only the
// last try counts a miss. Returns the entry as an object, or null when nothing fresh enough came in time.
async function pop(redis, keys, cname, minTtlMs, waitMs) {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const last = Date.now() >= deadline;
    const args = [keys.meta, keys.stats, keys.queue, keys.ann, keys.changes, cname, String(minTtlMs), last ? "1" : "0"];
    const reply = await redis.sendCommand(["FCALL", "ridpool_pop", "5", ...args]);
    if (reply !== null) {
      const entry = {};
      for (let i = 0; i < reply.length; i += 2) entry[reply[i]] = reply[i + 1];
      return entry;
    }
    if (last) return null;
    const left = Math.min(1000, deadline - Date.now());
    if (left > 0) await redis.sendCommand(["BLPOP", keys.ready, (Math.max(left, 10) / 1000).toFixed(3)]);
  }
}

// Agora's Cloud Recording `start` with the popped ID. Returns { ok, code, sid }.
async function start(entry) {
  const auth = Buffer.from(`${env.AGORA_CUSTOMER_ID}:${env.AGORA_CUSTOMER_SECRET}`).toString("base64");
  const base = env.AGORA_BASE_URL ?? "https://api.sd-rtn.com";
  const path = `/v1/apps/${entry.appid}/cloud_recording/resourceid/${encodeURIComponent(entry.resourceId)}`;
  const response = await fetch(`${base}${path}/mode/${env.AGORA_MODE ?? "mix"}/start`, {
    method: "POST",
    headers: { Authorization: `Basic ${auth}`, "Content-Type": "application/json" },
    body: JSON.stringify({
      cname: entry.cname,
      uid: entry.uid,
      clientRequest: JSON.parse(env.AGORA_CLIENT_REQUEST ?? "{}"),
    }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 200 && body.sid) return { ok: true, code: "", sid: body.sid };
  return { ok: false, code: String(body.code ?? response.status), sid: null };
}

// FCALL ridpool_report: counted by the ID's age, so that failure rates by age show in `ridpool status`.
async function report(redis, keys, entry, started) {
  const outcome = started.ok ? "ok" : "failed";
  const args = [keys.starts, keys.meta, String(entry.sentAt), outcome, started.code];
  return redis.sendCommand(["FCALL", "ridpool_report", "2", ...args]);
}

async function main() {
  const [pool, cname = ""] = process.argv.slice(2);
  if (!pool) {
    console.error("usage: node starter.js POOL [CNAME]");
    return 2;
  }
  const keys = poolKeys(env.RIDPOOL_PREFIX ?? "ridpool", pool, cname);
  // No reconnecting: a starter that cannot reach Redis says so at once and acquires on its own, or retries later.
  const redis = createClient({
    url: env.RIDPOOL_REDIS_URL ?? "redis://127.0.0.1:6379/0",
    socket: { connectTimeout: 2_000, reconnectStrategy: false },
  });
  redis.on("error", () => {}); // the failed call rejects with the same error; unheard, it would crash the process
  await redis.connect();
  try {
    const entry = await pop(redis, keys, cname, MIN_TTL_MS, WAIT_MS);
    if (entry === null) {
      console.error(`pool ${pool}: nothing fresh enough within ${WAIT_MS} ms`);
      return 3;
    }
    const started = await start(entry);
    const ageMs = await report(redis, keys, entry, started);
    const { resourceId, cname: channel, uid } = entry;
    console.log(JSON.stringify({ resourceId, cname: channel, uid, ...started, ageMs }));
    return started.ok ? 0 : 1;
  } finally {
    await redis.close();
  }
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`starter: ${error.message}`);
    process.exit(1);
  },
);
