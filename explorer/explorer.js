/* Polyray's self-hosted GraphiQL: every asset comes from this server (no CDN), so it works offline. */
/* global React, ReactDOM, GraphiQL */

(() => {
  const params = new URLSearchParams(location.search);
  const key = params.get('key');
  const DEFAULT_QUERY = `# Polyray: embeddings as a GraphQL field. Put your API key in the Headers tab below.
{
  models { name dimensions modality }
  embed(model: "text-glove", inputs: [{ text: "The cat sat on the mat." }]) { model dimensions source vector }
}
`;
  // The headers tab starts with the auth header ready to fill (or filled from ?key=).
  const headers = JSON.stringify({ authorization: `Bearer ${key || '<your prk_… key>'}` }, null, 2);
  const fetcher = async (graphQLParams, opts) => {
    const extra = opts?.headers ?? {};
    const auth = extra.authorization || extra.Authorization;
    // The placeholder is not a key: leave it out rather than send it (no clients file needs no key).
    const sent = auth?.includes('<your') ? Object.fromEntries(Object.entries(extra).filter(([k]) => k.toLowerCase() !== 'authorization')) : extra;
    const res = await fetch('/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'apollo-require-preflight': 'true', ...sent },
      body: JSON.stringify(graphQLParams),
    });
    return res.json();
  };
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: DEFAULT_QUERY,
      query: params.get('query') || undefined,
      defaultHeaders: headers,
      headers,
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: 'headers',
    }),
  );
})();
