// The app's own backend (server/api.mjs), through Vite's /api proxy.

export interface Profile {
  id: string
  name: string
  color: string
}

export type Access = 'write' | 'read' | 'none'

export interface RoomEntry {
  room: string
  title: string
  access: Exclude<Access, 'none'>
}

export async function me(userId: string): Promise<{ user: Profile; rooms: RoomEntry[] }> {
  const response = await fetch(`/api/me?user=${encodeURIComponent(userId)}`)
  if (response.status === 404) {
    return { user: { id: userId, name: userId, color: '#888888' }, rooms: [] }
  }
  if (!response.ok) throw new Error(`/api/me answered ${response.status}`)
  return response.json()
}

export async function accessTo(room: string, userId: string): Promise<Access> {
  const query = new URLSearchParams({ room, user: userId })
  const response = await fetch(`/api/access?${query}`)
  if (!response.ok) throw new Error(`/api/access answered ${response.status}`)
  return (await response.json()).access
}
