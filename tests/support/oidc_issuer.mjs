// A real OAuth 2 / OpenID Connect issuer for the tests: oidc-provider from npm.
// One confidential client with the client credentials grant; its access tokens
// are RS256 JWTs for the audience "kafka" (resource indicators), valid TOKEN_TTL s.
// Prints one JSON line per event: {"event":"listening",...}, {"event":"token",...}.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const ttl = Number(process.env.TOKEN_TTL || 300);
const audience = process.env.AUDIENCE || 'kafka';

const provider = new Provider(issuer, {
  // Signing keys (private JWKs) given by the test, the first of each type signing:
  // a restart with a new key first and the old one after is a key rotation.
  ...(process.env.JWKS ? { jwks: JSON.parse(process.env.JWKS) } : {}),
  // Claims the test wants in every access token (a grant of channels, a filter).
  ...(process.env.CLAIMS ? { extraTokenClaims: async () => JSON.parse(process.env.CLAIMS) } : {}),
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  }],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => `urn:${audience}`,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: audience,
        audience,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
provider.on('grant.success', (ctx) => {
  console.log(JSON.stringify({ event: 'token', client: ctx.oidc.client?.clientId }));
});
provider.on('grant.error', (ctx, error) => {
  console.log(JSON.stringify({ event: 'refused', error: error.error }));
});
provider.listen(port, '127.0.0.1', () => {
  console.log(JSON.stringify({ event: 'listening', issuer }));
});
