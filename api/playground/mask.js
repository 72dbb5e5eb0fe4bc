// The init image of an image-to-image job, and the inpainting mask painted over it.
// The mask is a canvas of the init image's own size (the API refuses a mask of another size):
// black everywhere, white where the user paints, sent as mask_source MASK_IMAGE_WHITE.

const WHITE = "#ffffff";
const BLACK = "#000000";

/** The bytes of ``file`` as base64 (no data: prefix). */
export function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export class MaskEditor {
  /** ``elements``: imageCanvas, maskCanvas, brush (a range input), eraser (a checkbox). */
  constructor({ imageCanvas, maskCanvas, brush, eraser }) {
    this.imageCanvas = imageCanvas;
    this.maskCanvas = maskCanvas;
    this.brush = brush;
    this.eraser = eraser;
    this.initBase64 = null;
    this.last = null;
    maskCanvas.addEventListener("pointerdown", (event) => this.startStroke(event));
    maskCanvas.addEventListener("pointermove", (event) => this.continueStroke(event));
    for (const name of ["pointerup", "pointercancel"]) maskCanvas.addEventListener(name, () => (this.last = null));
  }

  /** Show ``file`` as the init image, with a blank mask of its size. */
  async load(file) {
    const bitmap = await createImageBitmap(file);
    for (const canvas of [this.imageCanvas, this.maskCanvas]) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    this.imageCanvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    this.initBase64 = await readAsBase64(file); // the file as chosen: the API decodes and checks it
    this.clear();
  }

  unload() {
    this.initBase64 = null;
  }

  hasImage() {
    return this.initBase64 !== null;
  }

  clear() {
    const context = this.maskCanvas.getContext("2d");
    context.fillStyle = BLACK;
    context.fillRect(0, 0, this.maskCanvas.width, this.maskCanvas.height);
  }

  /** Whether any pixel of the mask is painted (erased strokes leave none). */
  isPainted() {
    const { width, height } = this.maskCanvas;
    const pixels = this.maskCanvas.getContext("2d").getImageData(0, 0, width, height).data;
    for (let index = 0; index < pixels.length; index += 4) if (pixels[index] > 0) return true;
    return false;
  }

  /** The mask as base64 PNG: white where to repaint. */
  maskBase64() {
    return this.maskCanvas.toDataURL("image/png").split(",", 2)[1];
  }

  /** The pointer's position in the canvas's own pixels (it is displayed scaled). */
  pointOf(event) {
    const box = this.maskCanvas.getBoundingClientRect();
    const scale = this.maskCanvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  }

  startStroke(event) {
    if (!this.hasImage()) return;
    event.preventDefault();
    this.maskCanvas.setPointerCapture(event.pointerId);
    this.last = this.pointOf(event);
    this.continueStroke(event);
  }

  continueStroke(event) {
    if (!this.last) return;
    const point = this.pointOf(event);
    const context = this.maskCanvas.getContext("2d");
    // The brush's size is in screen pixels, so it feels the same whatever the image's size.
    context.lineWidth = Number(this.brush.value) * point.scale;
    context.lineCap = "round";
    context.strokeStyle = this.eraser.checked ? BLACK : WHITE;
    context.beginPath();
    context.moveTo(this.last.x, this.last.y);
    context.lineTo(point.x, point.y);
    context.stroke();
    this.last = point;
  }
}
