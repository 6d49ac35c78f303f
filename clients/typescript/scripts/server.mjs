// Starts a throwaway `verdict serve` for the tests and `npm run generate`:
// a fresh SQLite file in a temp dir, bound to a free loopback port (the
// server binds 127.0.0.1:0 and prints the address it got), killed by
// `stop()`.
//
// The binary is VERDICT_BIN, else the workspace's debug build, found in the
// target dir cargo reports (so CARGO_TARGET_DIR is honoured).

import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository's root (two levels above clients/typescript). */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** A JWT secret of 32+ bytes (the server refuses shorter ones). */
export const TEST_SECRET = "verdict-client-tests-secret-0123456789abcdef";

/** How long a server may take to print its address, in milliseconds. */
const START_TIMEOUT_MS = 60_000;

/** @type {string | undefined} */
let foundBinary;

/** Servers still running, killed if this process exits without stopping them. */
/** @type {Set<import("node:child_process").ChildProcess>} */
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** The `verdict` binary to run. */
export function verdictBinary() {
  if (process.env.VERDICT_BIN) return process.env.VERDICT_BIN;
  if (foundBinary) return foundBinary;
  const metadata = JSON.parse(
    execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: repoRoot,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    }),
  );
  const binary = join(metadata.target_directory, "debug", "verdict");
  if (!existsSync(binary)) {
    throw new Error(
      `${binary} does not exist: build it with \`cargo build -p verdict --locked\` or set VERDICT_BIN`,
    );
  }
  foundBinary = binary;
  return binary;
}

/**
 * Starts `verdict serve`.
 * @param {{ manualClock?: boolean, env?: Record<string, string> }} [options]
 *   manualClock: VERDICT_CLOCK=manual (time moves by POST /v1/test-clock/advance);
 *   env: more VERDICT_* settings.
 * @returns {Promise<{ baseUrl: string, secret: string, output: () => string, stop: () => Promise<void> }>}
 */
export async function startServer(options = {}) {
  const dir = await mkdtemp(join(tmpdir(), "verdict-client-"));
  const child = spawn(verdictBinary(), ["serve", "--bind", "127.0.0.1:0"], {
    cwd: dir,
    env: {
      ...process.env,
      VERDICT_DATABASE_URL: `sqlite://${join(dir, "verdict.db")}`,
      VERDICT_JWT_SECRET: TEST_SECRET,
      VERDICT_CLOCK: options.manualClock ? "manual" : "system",
      VERDICT_WORKER: "on",
      VERDICT_MAIL_DIR: join(dir, "mail"),
      RUST_LOG: process.env.RUST_LOG ?? "warn",
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.once("exit", () => running.delete(child));
  // The last lines of its output, for failure messages.
  /** @type {string[]} */
  const lines = [];
  /** @param {string} line */
  const keep = (line) => {
    lines.push(line);
    if (lines.length > 200) lines.shift();
  };
  createInterface({ input: child.stderr }).on("line", keep);
  const stdout = createInterface({ input: child.stdout });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  let timer;
  try {
    /** @type {string} */
    const baseUrl = await new Promise((resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`verdict serve did not start within ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS,
      );
      stdout.on("line", (line) => {
        keep(line);
        const prefix = "verdict listening on ";
        if (line.startsWith(prefix)) resolve(line.slice(prefix.length).trim());
      });
      child.once("error", reject);
      child.once("exit", (code, signal) =>
        reject(new Error(`verdict serve exited (${code ?? signal}):\n${lines.join("\n")}`)),
      );
    });
    return { baseUrl, secret: TEST_SECRET, output: () => lines.join("\n"), stop };
  } catch (error) {
    await stop();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Mints an HS256 token as verdict checks it (claims `sub`, `role`, `exp`).
 * @param {string} secret
 * @param {"customer" | "provider" | "service" | "admin"} role
 * @param {string} sub
 * @param {number} [ttlSeconds]
 */
export function mintToken(secret, role, sub, ttlSeconds = 3600) {
  /** @param {object} value */
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const header = encode({ alg: "HS256", typ: "JWT" });
  const claims = encode({ sub, role, exp: Math.floor(Date.now() / 1000) + ttlSeconds });
  const signature = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}
