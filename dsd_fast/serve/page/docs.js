// Renders /openapi.json as a plain list of operations, from this server only: FastAPI's
// default /docs loads Swagger UI from a CDN, which an offline machine cannot reach.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function describeSchema(schema) {
  if (!schema) return "";
  const parts = [schema.type || ""];
  if (schema.enum) parts.push(`one of ${schema.enum.join(", ")}`);
  if (schema.minimum !== undefined) parts.push(`>= ${schema.minimum}`);
  if (schema.default !== undefined) parts.push(`default ${schema.default}`);
  if (schema.description) parts.push(`: ${schema.description}`);
  return parts.filter(Boolean).join(" ");
}

async function render() {
  const main = document.getElementById("api");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    main.replaceChildren(el("p", `${spec.info.title}, version ${spec.info.version}. ${spec.info.description || ""}`));
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const sec = el("section", undefined, "result");
        sec.appendChild(el("h2", `${method.toUpperCase()} ${path}`));
        if (op.summary) sec.appendChild(el("p", op.summary));
        const body = op.requestBody && op.requestBody.content;
        if (body) {
          sec.appendChild(el("p", `Request body: ${Object.keys(body).join(", ")}`));
          const form = body["multipart/form-data"];
          if (form && form.schema && form.schema.properties) {
            const ul = el("ul");
            for (const [name, s] of Object.entries(form.schema.properties)) {
              ul.appendChild(el("li", `${name}: ${describeSchema(s)}`));
            }
            sec.appendChild(ul);
          }
        }
        if (op.responses) {
          const ul = el("ul");
          for (const [code, r] of Object.entries(op.responses)) {
            ul.appendChild(el("li", `${code}: ${r.description || ""}`));
          }
          sec.appendChild(el("p", "Responses:"));
          sec.appendChild(ul);
        }
        main.appendChild(sec);
      }
    }
  } catch (e) {
    main.replaceChildren(el("p", `Could not read /openapi.json: ${e.message}`, "error"));
  }
}
render();
