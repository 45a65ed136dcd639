// Parse LogQL with Grafana's own grammar (@grafana/lezer-logql): one JSON array of queries on
// stdin, one syntax tree per query on stdout ({name, text, children}; text on leaves).
const { parser } = require("@grafana/lezer-logql");

function tree(cursor, source) {
  const node = { name: cursor.type.isError ? "⚠" : cursor.name, from: cursor.from, to: cursor.to, children: [] };
  if (cursor.firstChild()) {
    do node.children.push(tree(cursor, source)); while (cursor.nextSibling());
    cursor.parent();
  } else {
    node.text = source.slice(cursor.from, cursor.to);
  }
  return node;
}

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const queries = JSON.parse(input);
  process.stdout.write(JSON.stringify(queries.map((q) => tree(parser.parse(q).cursor(), q))));
});
