// Acceptance 5: the committed src/schema.d.ts is what openapi-typescript
// makes of a running server's /openapi.json, so regenerating changes nothing.

import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, test } from "vitest";

import { fetchDocument, renderSchema } from "../scripts/schema.mjs";
import { startVerdict, type TestServer } from "./support";

let server: TestServer;
beforeAll(async () => {
  server = await startVerdict();
});
afterAll(async () => {
  await server?.stop();
});

test("the committed types are what the server's /openapi.json generates", async () => {
  const committed = await readFile(fileURLToPath(new URL("../src/schema.d.ts", import.meta.url)), "utf8");
  const generated = await renderSchema(await fetchDocument(server.baseUrl));
  // On failure: `npm run generate` and commit src/schema.d.ts.
  expect(firstDifference(committed, generated), "src/schema.d.ts is stale: run `npm run generate`").toBeUndefined();
});

test("the generated session type carries what VerdictSession relies on", async () => {
  const document = (await fetchDocument(server.baseUrl)) as {
    components: { schemas: Record<string, { required?: string[] }> };
  };
  const required = document.components.schemas.SessionDto?.required ?? [];
  expect(required).toEqual(expect.arrayContaining(["presence_source", "presence_timeout_seconds", "status"]));
});

/** Where two texts first differ, as `line N: committed | generated`. */
function firstDifference(committed: string, generated: string): string | undefined {
  if (committed === generated) return undefined;
  const left = committed.split("\n");
  const right = generated.split("\n");
  for (let line = 0; line < Math.max(left.length, right.length); line += 1) {
    if (left[line] !== right[line]) {
      return `line ${line + 1}: committed ${JSON.stringify(left[line])} | generated ${JSON.stringify(right[line])}`;
    }
  }
  return "the texts differ in line endings";
}
