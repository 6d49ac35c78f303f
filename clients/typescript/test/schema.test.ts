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
  expect(generated === committed, "src/schema.d.ts is stale: run `npm run generate`").toBe(true);
});

test("the generated session type carries what VerdictSession relies on", async () => {
  const document = (await fetchDocument(server.baseUrl)) as {
    components: { schemas: Record<string, { required?: string[] }> };
  };
  const required = document.components.schemas.SessionDto?.required ?? [];
  expect(required).toEqual(expect.arrayContaining(["presence_source", "presence_timeout_seconds", "status"]));
});
