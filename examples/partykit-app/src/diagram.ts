// A small diagram: rectangles in the Y.Map "shapes" (id → {x, y, w, h,
// fill, z}), added with a button and moved by dragging; the other users'
// pointers come from awareness.
import type { Connection } from './connection'

export interface Shape {
  x: number
  y: number
  w: number
  h: number
  fill: string
  /** Stacking order: creation time, then id. */
  z: number
}

interface UserState {
  id: string
  name: string
  color: string
}

const SVG = 'http://www.w3.org/2000/svg'
const WIDTH = 800
const HEIGHT = 500
const FILLS = ['#ffd8a8', '#a5d8ff', '#b2f2bb', '#eebefa', '#ffec99', '#c5f6fa']

export function mountDiagram(root: HTMLElement, conn: Connection, readOnly: boolean): () => void {
  const { doc, provider } = conn
  const awareness = provider.awareness
  const shapes = doc.getMap<Shape>('shapes')

  root.innerHTML = `
    <section class="diagram">
      <div class="toolbar">
        <button type="button" class="add-shape">Add rectangle</button>
        <span class="hint"></span>
      </div>
      <svg viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="Diagram">
        <rect class="canvas" x="0" y="0" width="${WIDTH}" height="${HEIGHT}"></rect>
        <g class="shapes"></g>
        <g class="pointers"></g>
      </svg>
    </section>`
  const svg = root.querySelector('svg')!
  const shapeLayer = root.querySelector<SVGGElement>('g.shapes')!
  const pointerLayer = root.querySelector<SVGGElement>('g.pointers')!
  const addButton = root.querySelector<HTMLButtonElement>('.add-shape')!
  addButton.disabled = readOnly
  root.querySelector('.hint')!.textContent = readOnly ? 'Read-only: you can look, not move.' : 'Drag a rectangle to move it.'

  const toDiagram = (event: PointerEvent) => {
    const matrix = svg.getScreenCTM()
    if (!matrix) return { x: 0, y: 0 }
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse())
    return { x: Math.round(point.x), y: Math.round(point.y) }
  }

  addButton.addEventListener('click', () => {
    // Somewhere random: two people adding at once must not stack their
    // rectangles exactly on top of each other.
    const id = `${doc.clientID.toString(36)}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
    const [w, h] = [120, 80]
    shapes.set(id, {
      x: Math.round(20 + Math.random() * (WIDTH - w - 40)),
      y: Math.round(20 + Math.random() * (HEIGHT - h - 40)),
      w,
      h,
      fill: FILLS[shapes.size % FILLS.length],
      z: Date.now(),
    })
  })

  const renderShapes = () => {
    const entries = [...shapes.entries()].sort(([ida, a], [idb, b]) => a.z - b.z || (ida < idb ? -1 : 1))
    const seen = new Set<string>()
    for (const [id, shape] of entries) {
      seen.add(id)
      let rect = shapeLayer.querySelector<SVGRectElement>(`rect[data-id="${CSS.escape(id)}"]`)
      if (!rect) {
        rect = document.createElementNS(SVG, 'rect')
        rect.dataset.id = id
        rect.classList.add('shape')
        rect.setAttribute('rx', '8')
      }
      rect.setAttribute('x', String(shape.x))
      rect.setAttribute('y', String(shape.y))
      rect.setAttribute('width', String(shape.w))
      rect.setAttribute('height', String(shape.h))
      rect.setAttribute('fill', shape.fill)
      shapeLayer.append(rect) // (re)appended in stacking order
    }
    for (const rect of shapeLayer.querySelectorAll<SVGRectElement>('rect')) {
      if (!seen.has(rect.dataset.id!)) rect.remove()
    }
  }
  shapes.observe(renderShapes)
  renderShapes()

  // Dragging: each move is one small Yjs update of that shape.
  let drag: { id: string; dx: number; dy: number; pointerId: number } | null = null
  shapeLayer.addEventListener('pointerdown', (event) => {
    const rect = (event.target as Element).closest<SVGRectElement>('rect.shape')
    if (readOnly || !rect) return
    const shape = shapes.get(rect.dataset.id!)
    if (!shape) return
    const at = toDiagram(event)
    drag = { id: rect.dataset.id!, dx: at.x - shape.x, dy: at.y - shape.y, pointerId: event.pointerId }
    svg.setPointerCapture(event.pointerId)
    event.preventDefault()
  })
  const endDrag = (event: PointerEvent) => {
    if (drag && drag.pointerId === event.pointerId) {
      if (svg.hasPointerCapture(event.pointerId)) svg.releasePointerCapture(event.pointerId)
      drag = null
    }
  }
  svg.addEventListener('pointerup', endDrag)
  svg.addEventListener('pointercancel', endDrag)

  // Our pointer, for the others (at most once per frame).
  let pending: { x: number; y: number } | null | undefined
  let frame = 0
  const publishPointer = (pointer: { x: number; y: number } | null) => {
    pending = pointer
    if (frame) return
    frame = requestAnimationFrame(() => {
      frame = 0
      awareness.setLocalStateField('pointer', pending ?? null)
    })
  }
  svg.addEventListener('pointermove', (event) => {
    const at = toDiagram(event)
    publishPointer(at)
    if (drag && drag.pointerId === event.pointerId) {
      const shape = shapes.get(drag.id)
      if (!shape) return
      const x = Math.max(0, Math.min(WIDTH - shape.w, at.x - drag.dx))
      const y = Math.max(0, Math.min(HEIGHT - shape.h, at.y - drag.dy))
      if (x !== shape.x || y !== shape.y) shapes.set(drag.id, { ...shape, x, y })
    }
  })
  svg.addEventListener('pointerleave', () => {
    if (!drag) publishPointer(null)
  })

  const renderPointers = () => {
    pointerLayer.replaceChildren()
    awareness.getStates().forEach((state, clientId) => {
      if (clientId === doc.clientID) return
      const user = state.user as UserState | undefined
      const pointer = state.pointer as { x: number; y: number } | null | undefined
      if (!user || !pointer) return
      const g = document.createElementNS(SVG, 'g')
      g.classList.add('remote-pointer')
      g.dataset.user = user.id
      g.dataset.x = String(pointer.x)
      g.dataset.y = String(pointer.y)
      g.setAttribute('transform', `translate(${pointer.x} ${pointer.y})`)
      const arrow = document.createElementNS(SVG, 'path')
      arrow.setAttribute('d', 'M0 0 L0 16 L4.5 12 L8 19 L10.5 18 L7 11 L12.5 11 Z')
      arrow.setAttribute('fill', user.color)
      const label = document.createElementNS(SVG, 'text')
      label.setAttribute('x', '14')
      label.setAttribute('y', '26')
      label.setAttribute('fill', user.color)
      label.textContent = user.name
      g.append(arrow, label)
      pointerLayer.append(g)
    })
  }
  awareness.on('change', renderPointers)
  renderPointers()

  return () => {
    if (frame) cancelAnimationFrame(frame)
    shapes.unobserve(renderShapes)
    awareness.off('change', renderPointers)
    awareness.setLocalStateField('pointer', null)
    root.replaceChildren()
  }
}
