// The m3 browser viewer: NiiVue (WebGL2; NIfTI volumes and label overlays; maintained) renders slices, planes,
// window / level and overlays in the browser from one download per series, so scrolling costs no server call.
// What NiiVue does not do the radiologist's way is written here: one slice per wheel notch, arrow / Page keys,
// letters and a scale bar as page text, the ellipse ROI's mean / SD, cine, per-label toggles and the legend.
import { Niivue, SLICE_TYPE, DRAG_MODE } from '@niivue/niivue'

const PLANES = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL, '3 planes': SLICE_TYPE.MULTIPLANAR }
const AXIS = { sagittal: 0, coronal: 1, axial: 2 } // RAS voxel axis each plane steps along
const AX_COR_SAG = ['axial', 'coronal', 'sagittal']
// screen edges in the radiological convention (patient's right on the screen's left; nose to the left on sagittal)
const LETTERS = {
  axial: { left: 'R', right: 'L', top: 'A', bottom: 'P' },
  coronal: { left: 'R', right: 'L', top: 'S', bottom: 'I' },
  sagittal: { left: 'A', right: 'P', top: 'S', bottom: 'I' },
}
const TOOLS = { 'W/L': DRAG_MODE.windowing, Pan: DRAG_MODE.pan, Ruler: DRAG_MODE.measurement, Ellipse: DRAG_MODE.callbackOnly }
const SCALE_STEPS_MM = [1, 2, 5, 10, 20, 50, 100, 200]
const CINE_FPS = 15

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v)
  }
  for (const c of children) node.append(c)
  return node
}

class M3Viewer {
  constructor(root) {
    this.root = root
    this.payload = null
    this.plane = 'axial'
    this.tool = 'W/L'
    this.hidden = new Set() // label values switched off
    this.pending = 0 // wheel / key slice steps not drawn yet (drawn once per frame)
    this.frames = 0 // frames drawn by a slice step (the scroll benchmark reads it)
    this.measurements = []
    this.rois = []
    this.build()
  }

  // --- page ------------------------------------------------------------------------------------
  build() {
    const button = (label, onclick, cls = '') => el('button', { type: 'button', class: `m3w-btn ${cls}`, 'data-m3': label, onclick }, label)
    this.planeButtons = Object.keys(PLANES).map((p) => button(p, () => this.setPlane(p), 'm3w-plane'))
    this.toolButtons = Object.keys(TOOLS).map((t) => button(t, () => this.setTool(t), 'm3w-tool'))
    this.presetSelect = el('select', { class: 'm3w-preset', 'aria-label': 'Window preset', onchange: (e) => this.applyPreset(e.target.value) })
    this.cineButton = button('Cine', () => this.toggleCine(), 'm3w-cine')
    const bar = el('div', { class: 'm3w-bar' },
      el('span', { class: 'm3w-group' }, ...this.planeButtons),
      el('span', { class: 'm3w-group' }, ...this.toolButtons),
      el('span', { class: 'm3w-group' }, button('−', () => this.zoomBy(1 / 1.25), 'm3w-zoom-out'), button('+', () => this.zoomBy(1.25), 'm3w-zoom-in'),
        button('Reset', () => this.reset(), 'm3w-reset'), this.cineButton),
      el('span', { class: 'm3w-group' }, this.presetSelect))
    this.warning = el('div', { class: 'm3w-warning', role: 'alert', hidden: '' })
    this.canvas = el('canvas', { class: 'm3w-canvas' })
    this.letters = Object.fromEntries(['top', 'bottom', 'left', 'right'].map((side) => [side, el('div', { class: `m3w-letter m3w-${side}` })]))
    this.scaleBar = el('div', { class: 'm3w-scale-bar' })
    this.scaleText = el('span', { class: 'm3w-scale-text' })
    this.info = el('div', { class: 'm3w-info' })
    this.wl = el('div', { class: 'm3w-wl' })
    this.svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg')
    this.svg.setAttribute('class', 'm3w-roi')
    this.stage = el('div', { class: 'm3w-stage', tabindex: '0' }, this.canvas, this.svg, ...Object.values(this.letters),
      el('div', { class: 'm3w-scale' }, this.scaleBar, this.scaleText), this.info, this.wl)
    this.readout = el('div', { class: 'm3w-readout', 'aria-live': 'polite' })
    this.labels = el('div', { class: 'm3w-labels' })
    this.root.replaceChildren(el('div', { class: 'm3w' }, bar, this.warning, this.stage, this.readout, this.labels))
    this.stage.addEventListener('wheel', (e) => this.onWheel(e), { capture: true, passive: false })
    // keys act while the pointer is over the picture or the focus is in the viewer (a toolbar button), not while typing
    document.addEventListener('keydown', (e) => {
      const t = e.target
      if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return
      if (this.hover || this.root.contains(document.activeElement)) this.onKey(e)
    }, { capture: true })
    this.stage.addEventListener('pointerenter', () => { this.hover = true })
    this.stage.addEventListener('pointerleave', () => { this.hover = false })
    this.stage.addEventListener('contextmenu', (e) => e.preventDefault())
  }

  async ensureNiivue() {
    if (this.nv) return this.nv
    const nv = new Niivue({
      backColor: [0, 0, 0, 1], crosshairColor: [0.2, 0.8, 1, 0.6], crosshairWidth: 0.5, isRadiologicalConvention: true,
      sagittalNoseLeft: true, isOrientationTextVisible: false, show3Dcrosshair: false, dragAndDropEnabled: false,
      measureTextColor: [1, 0.85, 0, 1], measureLineColor: [1, 0.85, 0, 1], multiplanarForceRender: false, logLevel: 'error',
      isNearestInterpolation: false, showLegend: false,
    })
    await nv.attachToCanvas(this.canvas)
    nv.setMouseEventConfig({ leftButton: { primary: TOOLS[this.tool] }, rightButton: DRAG_MODE.pan, centerButton: DRAG_MODE.pan })
    const draw = nv.drawScene.bind(nv)
    nv.drawScene = (...args) => { const out = draw(...args); this.afterDraw(); return out }
    nv.onMeasurementCompleted = (m) => this.onMeasured(m)
    nv.onDragRelease = (d) => { if (this.tool === 'Ellipse') this.onEllipse(d) }
    nv.onMouseUp = () => this.reportView()
    this.nv = nv
    this.watchEllipseDrag()
    return nv
  }

  // --- what the server sends: the series, its window presets, the overlay -----------------------
  async show(text) {
    const payload = typeof text === 'string' ? (text ? JSON.parse(text) : null) : text
    if (!payload || !payload.volume) { this.root.classList.remove('m3-web-ready'); this.payload = null; return }
    const previous = this.payload
    this.payload = payload
    const nv = await this.ensureNiivue()
    if (!previous || previous.volume !== payload.volume) {
      this.stopCine()
      this.hidden.clear()
      this.clearMarks()
      await nv.loadVolumes([{ url: payload.volume, name: 'series.nii.gz' }])
      const vol = nv.volumes[0]
      if (payload.window) this.setWindow(payload.window[0], payload.window[1], false)
      this.setPlane(payload.is2d ? 'axial' : (payload.plane || 'axial'), false)
      this.buildPresets()
      if (payload.start_mm) this.goToMM(payload.start_mm, false)
      document.body.classList.add('m3-client-viewer')
      this.root.classList.add('m3-web-ready')
    }
    await this.showOverlay(previous && previous.volume === payload.volume ? previous.overlay : null, payload.overlay)
    this.warning.hidden = !payload.warning
    this.warning.textContent = payload.warning || ''
    for (const b of this.planeButtons) b.disabled = !!payload.is2d && b.dataset.m3 !== 'axial'
    this.presetSelect.disabled = !!payload.colour
    nv.updateGLVolume()
    this.reportView()
  }

  async showOverlay(before, overlay) {
    const nv = this.nv
    const sameMask = before && overlay && before.url === overlay.url
    if (!sameMask) {
      while (nv.volumes.length > 1) nv.removeVolume(nv.volumes[nv.volumes.length - 1])
      this.hidden.clear()
      if (overlay) {
        await nv.addVolumeFromUrl({ url: overlay.url, name: 'labels.nii.gz', opacity: overlay.opacity })
        if (overlay.jump_mm) this.goToMM(overlay.jump_mm, false)
      }
    }
    if (overlay) {
      this.applyLabelColours()
      nv.setOpacity(1, overlay.opacity)
    }
    this.buildLegend()
  }

  applyLabelColours() {
    const labels = this.payload.overlay.labels
    const I = [0, ...labels.map((l) => l.value)]
    const cmap = {
      R: [0, ...labels.map((l) => l.colour[0])], G: [0, ...labels.map((l) => l.colour[1])], B: [0, ...labels.map((l) => l.colour[2])],
      A: [0, ...labels.map((l) => (this.hidden.has(l.value) ? 0 : 255))], I, labels: ['', ...labels.map((l) => l.name)],
    }
    this.nv.volumes[1].setColormapLabel(cmap)
    this.nv.updateGLVolume()
  }

  buildLegend() {
    const overlay = this.payload && this.payload.overlay
    document.body.classList.toggle('m3-client-overlay', !!overlay) // this legend replaces the server's
    if (!overlay) { this.labels.replaceChildren(); return }
    const rows = overlay.labels.map((l) => {
      const box = el('input', { type: 'checkbox', 'data-label': String(l.value), 'aria-label': `Show ${l.name}` })
      box.checked = !this.hidden.has(l.value)
      box.addEventListener('change', () => { box.checked ? this.hidden.delete(l.value) : this.hidden.add(l.value); this.applyLabelColours() })
      const go = el('button', { type: 'button', class: 'm3w-btn m3w-go', 'data-label': String(l.value), title: 'Go to its largest cross-section',
        onclick: () => l.jump_mm && this.goToMM(l.jump_mm) }, '⌖')
      return el('label', { class: 'm3w-label' }, box, el('span', { class: 'm3w-swatch', style: `background:rgb(${l.colour.join(',')})` }),
        el('span', {}, l.text || l.name), go)
    })
    this.labels.replaceChildren(el('strong', {}, overlay.title), ...rows)
  }

  buildPresets() {
    const presets = (this.payload && this.payload.presets) || {}
    this.presetSelect.replaceChildren(el('option', { value: '' }, 'Window preset'),
      ...Object.keys(presets).map((name) => el('option', { value: name }, name)))
  }

  // --- interactions ----------------------------------------------------------------------------
  setPlane(plane, draw = true) {
    this.plane = plane
    this.nv.setSliceType(PLANES[plane])
    this.nv.opts.crosshairWidth = plane === '3 planes' ? 1 : 0 // the crosshair links the 3 planes; alone it hides anatomy
    for (const b of this.planeButtons) b.classList.toggle('m3w-on', b.dataset.m3 === plane)
    this.clearMarks()
    if (draw) { this.nv.drawScene(); this.reportView() }
  }

  setTool(tool) {
    this.tool = tool
    this.nv.setMouseEventConfig({ leftButton: { primary: TOOLS[tool] }, rightButton: DRAG_MODE.pan, centerButton: DRAG_MODE.pan })
    for (const b of this.toolButtons) b.classList.toggle('m3w-on', b.dataset.m3 === tool)
  }

  applyPreset(name) {
    const cw = this.payload.presets[name]
    if (cw) this.setWindow(cw[0], cw[1])
  }

  setWindow(centre, width, draw = true) {
    const vol = this.nv.volumes[0]
    vol.cal_min = centre - width / 2
    vol.cal_max = centre + width / 2
    if (draw) this.nv.updateGLVolume()
  }

  zoomBy(factor) {
    const nv = this.nv
    const zoom = Math.min(20, Math.max(0.2, nv.scene.pan2Dxyzmm[3] * factor))
    nv.scene.pan2Dxyzmm[3] = zoom
    nv.drawScene()
  }

  reset() {
    const nv = this.nv
    nv.scene.pan2Dxyzmm = [0, 0, 0, 1]
    if (this.payload.window) this.setWindow(this.payload.window[0], this.payload.window[1], false)
    this.presetSelect.value = ''
    this.clearMarks()
    nv.updateGLVolume()
  }

  // the plane a wheel or key steps: the tile under the pointer in the 3-plane layout, else the plane shown
  steppedPlane(e) {
    if (this.plane !== '3 planes') return this.plane
    const rect = this.canvas.getBoundingClientRect()
    const dpr = this.nv.uiData.dpr || 1
    const tile = e && e.clientX !== undefined ? this.nv.tileIndex((e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr) : -1
    return tile >= 0 ? AX_COR_SAG[this.nv.screenSlices[tile].axCorSag] || 'axial' : (this.lastPlane || 'axial')
  }

  onWheel(e) {
    if (!this.nv || !this.payload) return
    e.preventDefault()
    e.stopPropagation()
    if (e.ctrlKey) { this.zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1); return }
    this.lastPlane = this.steppedPlane(e)
    this.step(Math.sign(e.deltaY)) // one notch, one slice; down goes to the next (higher) slice number
  }

  onKey(e) {
    if (!this.nv || !this.payload || e.altKey || e.ctrlKey || e.metaKey) return
    const plane = this.plane === '3 planes' ? (this.lastPlane || 'axial') : this.plane
    const count = this.sliceCount(plane)
    const page = Math.max(1, Math.round(count / 10))
    const delta = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: page, PageDown: -page }[e.key]
    if (delta === undefined) return
    e.preventDefault()
    e.stopPropagation()
    this.lastPlane = plane
    this.step(delta)
  }

  // slice steps are added up and drawn once per animation frame: a fast wheel never queues stale frames
  step(delta) {
    if (!delta || this.payload.is2d) return
    this.pending += delta
    if (this.frameRequested) return
    this.frameRequested = true
    requestAnimationFrame(() => {
      this.frameRequested = false
      const plane = this.plane === '3 planes' ? (this.lastPlane || 'axial') : this.plane
      const move = [0, 0, 0]
      move[AXIS[plane]] = this.pending
      this.pending = 0
      this.nv.moveCrosshairInVox(move[0], move[1], move[2])
      this.frames += 1
      this.reportView()
    })
  }

  toggleCine() {
    if (this.cine) { this.stopCine(); return }
    const plane = this.plane === '3 planes' ? 'axial' : this.plane
    this.lastPlane = plane
    this.cineButton.classList.add('m3w-on')
    this.cine = setInterval(() => {
      const here = this.sliceIndex(plane)
      const move = [0, 0, 0]
      move[AXIS[plane]] = here + 1 >= this.sliceCount(plane) ? -here : 1 // loops back to the first slice
      this.nv.moveCrosshairInVox(move[0], move[1], move[2])
      this.reportView()
    }, 1000 / CINE_FPS)
  }

  stopCine() {
    if (this.cine) clearInterval(this.cine)
    this.cine = null
    this.cineButton.classList.remove('m3w-on')
  }

  goToMM(mm, draw = true) {
    const nv = this.nv
    nv.scene.crosshairPos = nv.mm2frac(mm)
    if (draw) { nv.drawScene(); this.reportView() }
  }

  // --- measurements ----------------------------------------------------------------------------
  onMeasured(m) {
    const text = `Distance ${m.distance.toFixed(1)} mm`
    this.measurements.push(m.distance)
    this.readout.dataset.distanceMm = m.distance.toFixed(2)
    this.readout.textContent = text
  }

  // the ellipse follows the drag on the SVG layer; on release its voxels give mean and SD
  watchEllipseDrag() {
    let start = null
    const ellipse = document.createElementNS('http://www.w3.org/2000/svg', 'ellipse')
    ellipse.setAttribute('class', 'm3w-ellipse')
    this.canvas.addEventListener('mousedown', (e) => {
      if (this.tool !== 'Ellipse' || e.button !== 0) return
      const r = this.canvas.getBoundingClientRect()
      start = [e.clientX - r.left, e.clientY - r.top]
      this.svg.replaceChildren(ellipse)
    })
    window.addEventListener('mousemove', (e) => {
      if (!start) return
      const r = this.canvas.getBoundingClientRect()
      const x = e.clientX - r.left; const y = e.clientY - r.top
      ellipse.setAttribute('cx', (start[0] + x) / 2); ellipse.setAttribute('cy', (start[1] + y) / 2)
      ellipse.setAttribute('rx', Math.abs(x - start[0]) / 2); ellipse.setAttribute('ry', Math.abs(y - start[1]) / 2)
    })
    window.addEventListener('mouseup', () => { start = null })
  }

  onEllipse(d) {
    const vol = this.nv.volumes[0]
    if (d.axCorSag < 0 || d.axCorSag > 2) return
    const normal = [2, 1, 0][d.axCorSag] // the RAS axis across the slice
    const a = d.voxStart.map(Math.round); const b = d.voxEnd.map(Math.round)
    const lo = [0, 1, 2].map((i) => Math.min(a[i], b[i])); const hi = [0, 1, 2].map((i) => Math.max(a[i], b[i]))
    lo[normal] = hi[normal] = Math.round(this.nv.frac2vox(this.nv.scene.crosshairPos)[normal])
    const [data, dims] = vol.getVolumeData(lo, hi)
    const slope = vol.hdr.scl_slope || 1; const inter = vol.hdr.scl_inter || 0
    const axes = [0, 1, 2].filter((i) => i !== normal)
    const centre = axes.map((i) => (lo[i] + hi[i]) / 2); const radius = axes.map((i) => Math.max(0.5, (hi[i] - lo[i]) / 2))
    let n = 0; let sum = 0; let sq = 0
    for (let z = 0; z < dims[2]; z++) for (let y = 0; y < dims[1]; y++) for (let x = 0; x < dims[0]; x++) {
      const v = [lo[0] + x, lo[1] + y, lo[2] + z]
      const u = (v[axes[0]] - centre[0]) / radius[0]; const w = (v[axes[1]] - centre[1]) / radius[1]
      if (u * u + w * w > 1) continue
      const value = data[x + dims[0] * (y + dims[1] * z)] * slope + inter
      n += 1; sum += value; sq += value * value
    }
    if (!n) return
    const mean = sum / n; const sd = Math.sqrt(Math.max(0, sq / n - mean * mean))
    const unit = this.payload.modality === 'CT' ? 'HU' : 'signal'
    const spacing = vol.pixDimsRAS ? axes.map((i) => vol.pixDimsRAS[i + 1]) : [1, 1]
    const area = Math.PI * radius[0] * spacing[0] * radius[1] * spacing[1]
    this.rois.push({ mean, sd, n })
    Object.assign(this.readout.dataset, { roiMean: mean.toFixed(2), roiSd: sd.toFixed(2), roiVoxels: String(n) })
    this.readout.textContent = `Ellipse: mean ${mean.toFixed(1)} ${unit}, SD ${sd.toFixed(1)}, ${n} voxels, ${(area / 100).toFixed(2)} cm²`
  }

  clearMarks() {
    if (this.nv) { this.nv.clearMeasurements?.(); this.nv.document.completedMeasurements = [] }
    this.svg.replaceChildren()
    this.readout.textContent = ''
  }

  // --- what the page shows around the canvas ---------------------------------------------------
  sliceIndex(plane) {
    return Math.round(this.nv.frac2vox(this.nv.scene.crosshairPos)[AXIS[plane]])
  }

  sliceCount(plane) {
    return this.nv.volumes[0].dimsRAS[AXIS[plane] + 1]
  }

  afterDraw() {
    const nv = this.nv
    if (!nv || !nv.volumes.length || !this.payload) return
    const single = this.plane !== '3 planes'
    for (const [side, node] of Object.entries(this.letters)) node.textContent = single && !this.payload.is2d ? LETTERS[this.plane][side] : ''
    nv.opts.isOrientationTextVisible = !single // NiiVue letters each tile of the 3-plane layout
    const plane = single ? this.plane : (this.lastPlane || 'axial')
    const count = this.sliceCount(plane)
    const index = this.sliceIndex(plane)
    this.info.textContent = this.payload.is2d ? 'image' : `${plane} ${index + 1}/${count}`
    this.info.dataset.plane = plane
    this.info.dataset.index = String(index)
    const vol = nv.volumes[0]
    const centre = (vol.cal_min + vol.cal_max) / 2; const width = vol.cal_max - vol.cal_min
    this.wl.textContent = this.payload.colour ? 'colour image' : `W ${Math.round(width)} / L ${Math.round(centre)}`
    Object.assign(this.wl.dataset, { centre: String(centre), width: String(width) })
    this.updateScale()
  }

  updateScale() {
    const tile = this.nv.screenSlices[0]
    if (!tile || !tile.fovMM || !tile.leftTopWidthHeight) return
    const dpr = this.nv.uiData.dpr || 1
    const pxPerMM = tile.leftTopWidthHeight[2] / dpr / Math.abs(tile.fovMM[0])
    if (!isFinite(pxPerMM) || pxPerMM <= 0) return
    const maxPx = this.stage.clientWidth * 0.25
    const mm = SCALE_STEPS_MM.filter((s) => s * pxPerMM <= maxPx).pop() || SCALE_STEPS_MM[0]
    this.scaleBar.style.width = `${mm * pxPerMM}px`
    this.scaleText.textContent = mm >= 10 ? `${mm / 10} cm` : `${mm} mm`
    Object.assign(this.scaleBar.dataset, { mm: String(mm), pxPerMm: String(pxPerMM) })
  }

  // the slice on screen, for "this slice" questions: written into the page's hidden view box, read by the next question
  reportView() {
    if (!this.nv || !this.payload) return
    const box = document.querySelector('#m3-web-view textarea, #m3-web-view input')
    if (!box) return
    const plane = this.plane === '3 planes' ? (this.lastPlane || 'axial') : this.plane
    const mm = Array.from(this.nv.frac2mm(this.nv.scene.crosshairPos)).slice(0, 3).map((v) => Math.round(v * 1000) / 1000)
    const text = JSON.stringify({ series: this.payload.series, plane, mm })
    if (box.value === text) return
    box.value = text
    box.dispatchEvent(new Event('input', { bubbles: true })) // updates the page's value only: no event is wired to it
  }
}

// --- page hooks --------------------------------------------------------------------------------
function webgl2() {
  try { return !!document.createElement('canvas').getContext('webgl2') } catch { return false }
}

let viewer = null
let queue = Promise.resolve()
function show(text) {
  const root = document.querySelector('#m3-web-root')
  const forced = new URLSearchParams(location.search).get('viewer') === 'server'
  if (!root || forced || !webgl2()) { document.body.classList.remove('m3-client-viewer'); return }
  if (!viewer || !root.contains(viewer.stage)) viewer = new M3Viewer(root)
  queue = queue.then(() => viewer.show(text)).catch((err) => {
    console.error('m3 viewer:', err)
    document.body.classList.remove('m3-client-viewer') // the server-rendered viewer takes over
  })
  return queue
}

window.m3Viewer = { show, get current() { return viewer }, PLANES: Object.keys(PLANES) }
if (window.m3PendingPayload !== undefined) show(window.m3PendingPayload)
