/// <reference types="vite/client" />

/** The y-partykit host from vite.config.ts (VITE_PARTY_HOST, else localhost:$PORT). */
declare const __PARTY_HOST__: string
