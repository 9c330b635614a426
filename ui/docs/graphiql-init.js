// GraphiQL for /graphql. Everything it loads is served by the coordinator
// itself (no CDN). Requests go to the same origin with the browser's
// session cookie (POST /api/session); X-Requested-With marks them as not
// cross-site for the coordinator's cookie check.
const fetcher = GraphiQL.createFetcher({
  url: "graphql",
  headers: { "X-Requested-With": "graphiql" },
});
ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher,
    defaultQuery:
      "# The pool, a page at a time (docs/graphql.md)\n" +
      "{\n  workers(first: 20) {\n    nodes { workerId workerType status currentLoad assignedServices }\n" +
      "    pageInfo { endCursor hasNextPage }\n  }\n  stats { totalWorkers healthyWorkers }\n}\n",
  }),
);
