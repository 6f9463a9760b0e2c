// Bundles src/m3-viewer.js with NiiVue into m3-viewer.js (one minified IIFE, committed, served by app.webviewer).
// NiiVue's Zarr codecs (numcodecs: zstd / blosc / lz4 WebAssembly, 1.4 MB) are replaced by a stub: the app sends NIfTI only.
import { build } from 'esbuild'

const noZarrCodecs = {
  name: 'no-zarr-codecs',
  setup(b) {
    b.onResolve({ filter: /^numcodecs(\/.*)?$/ }, (args) => ({ path: args.path, namespace: 'no-zarr-codecs' }))
    b.onLoad({ filter: /.*/, namespace: 'no-zarr-codecs' }, () => ({
      contents: 'export default { fromConfig() { throw new Error("Zarr codecs are not bundled in the m3 viewer: NIfTI only.") } }',
      loader: 'js',
    }))
  },
}

await build({
  entryPoints: ['src/m3-viewer.js'],
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome110', 'firefox115', 'safari16'],
  outfile: 'm3-viewer.js',
  legalComments: 'none',
  plugins: [noZarrCodecs],
  logLevel: 'info',
})
