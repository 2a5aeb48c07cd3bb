// Files dropped anywhere on the page are uploads. Without a handler on the whole document, a file dropped beside
// the small drop zone (on the picture, say) is opened by the browser itself, which navigates away from the page.
// Only drags that carry files are taken over: text dragged into the API key field still lands there.

function carriesFiles(event) {
  return Array.from(event.dataTransfer?.types || []).includes("Files");
}

// `zone` is highlighted while a file is dragged over it; a file dropped anywhere is passed to `onFile`.
export function acceptDroppedFiles(zone, onFile) {
  for (const type of ["dragenter", "dragover"]) {
    // Cancelling these makes the page a drop target, so the browser's own "open the file" never happens.
    document.addEventListener(type, (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    zone.addEventListener(type, (e) => { if (carriesFiles(e)) zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  document.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    zone.classList.remove("over");
    onFile(e.dataTransfer.files[0]);
  });
}
