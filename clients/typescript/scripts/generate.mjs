// `npm run generate`: regenerates src/schema.d.ts from a verdict server's
// /openapi.json. Reads VERDICT_URL when set; otherwise starts a throwaway
// `verdict serve` (VERDICT_BIN, else the workspace's debug build).

import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { fetchDocument, renderSchema } from "./schema.mjs";
import { startServer } from "./server.mjs";

const target = fileURLToPath(new URL("../src/schema.d.ts", import.meta.url));

const server = process.env.VERDICT_URL ? undefined : await startServer();
try {
  const baseUrl = process.env.VERDICT_URL ?? server?.baseUrl ?? "";
  const text = await renderSchema(await fetchDocument(baseUrl));
  await writeFile(target, text);
  console.log(`wrote ${target} from ${baseUrl}/openapi.json`);
} finally {
  await server?.stop();
}
