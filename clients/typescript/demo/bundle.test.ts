// The demo room's script compiled into the binary
// (crates/verdict-http/assets/demo-room.js) is what `npm run build:demo`
// makes of demo/room.ts and the client today: a change to either without
// rebuilding the bundle fails here.

import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { expect, test } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the bundled demo room script is current", async () => {
  const manifest = JSON.parse(await readFile(join(root, "package.json"), "utf8"));
  const script: string = manifest.scripts["build:demo"];
  const [command, ...args] = script.split(" ");
  expect(command).toBe("esbuild");
  const outfile = args.find((arg) => arg.startsWith("--outfile="));
  expect(outfile).toBeDefined();
  const committedPath = join(root, outfile!.slice("--outfile=".length));
  const folder = await mkdtemp(join(tmpdir(), "demo-bundle-"));
  try {
    const rebuilt = join(folder, "demo-room.js");
    const esbuild = join(root, "node_modules", ".bin", "esbuild");
    await promisify(execFile)(esbuild, [...args.filter((arg) => arg !== outfile), `--outfile=${rebuilt}`, "--log-level=warning"], { cwd: root });
    const [committed, fresh] = await Promise.all([readFile(committedPath, "utf8"), readFile(rebuilt, "utf8")]);
    // On failure: `npm run build:demo` and commit the bundle.
    expect(committed === fresh, "crates/verdict-http/assets/demo-room.js is stale: run `npm run build:demo`").toBe(true);
  } finally {
    await rm(folder, { recursive: true, force: true });
  }
});

test("the room page script uses the client, not a copy of it", async () => {
  const room = await readFile(join(root, "demo", "room.ts"), "utf8");
  expect(room).toContain('from "../src/index"');
  expect(room).not.toMatch(/fetch\(/);
});
