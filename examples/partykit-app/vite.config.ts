import { defineConfig, loadEnv } from 'vite'

export default defineConfig(({ mode }) => {
  // The environment, and .env files as Vite reads them.
  const env = loadEnv(mode, process.cwd(), '')
  // Ports come from the environment so several copies (and the browser
  // tests) can run side by side: WEB_PORT for this server, API_PORT for the
  // backend (server/api.mjs), PORT for partyline (which reads PORT itself).
  const webPort = Number(env.WEB_PORT || 5173)
  const apiPort = Number(env.API_PORT || 8788)
  // Where the providers connect: VITE_PARTY_HOST as in a PartyKit app
  // (your Partyline gateways' host in production), else the local
  // partyline dev.
  const partyHost = env.VITE_PARTY_HOST || `localhost:${env.PORT || 1999}`

  return {
    define: {
      __PARTY_HOST__: JSON.stringify(partyHost),
    },
    server: {
      port: webPort,
      strictPort: true,
      proxy: {
        '/api': `http://127.0.0.1:${apiPort}`,
      },
    },
    // Bundled at start-up, so a first page load never finds a new
    // dependency and reloads itself.
    optimizeDeps: {
      include: ['yjs', 'y-partykit/provider', 'y-protocols/auth'],
    },
  }
})
