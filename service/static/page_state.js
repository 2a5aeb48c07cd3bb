// The page's state, shared by its modules, and its one DOM helper.

export const $ = (id) => document.getElementById(id);
export const state = {
  classes: [],        // [{id, name, color}] from /classes
  model: null,        // the model name /classes gave (answers name the model that made them)
  inputSize: null,    // the model's input size /classes gave ("2x" detail is twice it), null if not named
  outputs: null,      // [{name, description, json, encodings: [{format, media_type, suffix}]}] from /outputs
  outputsRead: null,  // the pending or finished read of /outputs
  file: null,         // the File being shown
  detail: "",         // the `resolution` query its result was asked for with: every later request for it sends it
  image: null,        // ImageBitmap of the upload (EXIF orientation applied by the browser)
  mask: null,         // canvas: class colours, background transparent
  stats: null,        // the stats answer (has `id`, `classes`, `width`, `height`)
  polygons: null,     // the polygons answer, once asked for
  polygonsRead: null, // the pending request for them: the toggle and the download share it
  run: 0,             // increments per upload, so a slow older answer never overwrites a newer one
  controller: null,   // AbortController of the newest upload's requests (a newer upload aborts them)
};
