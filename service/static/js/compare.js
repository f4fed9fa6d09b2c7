// The before/after viewer: the input stretched to the result's size under the result, a split that the
// range input, a drag or the arrow keys move, and a zoom that enlarges the stage inside a scrolling viewport.
export function setupCompare(root) {
  const stage = root.querySelector("#stage");
  const viewport = root.querySelector("#viewport");
  const split = root.querySelector("#split");
  const zoom = root.querySelector("#zoom");
  const zoomValue = root.querySelector("#zoom-value");

  const setSplit = (percent) => {
    const value = Math.max(0, Math.min(100, percent));
    split.value = value;
    stage.style.setProperty("--split", `${value}%`);
  };
  split.addEventListener("input", () => setSplit(Number(split.value)));

  const setZoom = (factor) => {
    const centre = [
      (viewport.scrollLeft + viewport.clientWidth / 2) / viewport.scrollWidth,
      (viewport.scrollTop + viewport.clientHeight / 2) / viewport.scrollHeight,
    ];
    stage.style.setProperty("--zoom", factor);
    zoomValue.textContent = `${factor}×`;
    viewport.scrollLeft = centre[0] * viewport.scrollWidth - viewport.clientWidth / 2;
    viewport.scrollTop = centre[1] * viewport.scrollHeight - viewport.clientHeight / 2;
  };
  zoom.addEventListener("input", () => setZoom(Number(zoom.value)));

  let dragging = false;
  const fromPointer = (event) => {
    const box = stage.getBoundingClientRect();
    setSplit(((event.clientX - box.left) / box.width) * 100);
  };
  stage.addEventListener("pointerdown", (event) => {
    dragging = true;
    stage.setPointerCapture(event.pointerId);
    fromPointer(event);
  });
  stage.addEventListener("pointermove", (event) => dragging && fromPointer(event));
  stage.addEventListener("pointerup", () => (dragging = false));
  viewport.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? 10 : 2;
    if (event.key === "ArrowLeft" && !event.altKey) setSplit(Number(split.value) - step);
    else if (event.key === "ArrowRight" && !event.altKey) setSplit(Number(split.value) + step);
    else if (event.key === "+" || event.key === "=") zoom.stepUp();
    else if (event.key === "-") zoom.stepDown();
    else return;
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") setZoom(Number(zoom.value));
    event.preventDefault();
  });

  return {
    /** Show `afterUrl` over `beforeUrl` (null: the result alone) at the result's aspect ratio. */
    show(beforeUrl, afterUrl, width, height) {
      root.hidden = false;
      root.classList.toggle("after-only", !beforeUrl);
      split.disabled = !beforeUrl;
      stage.style.setProperty("--ratio", `${width} / ${height}`);
      const before = root.querySelector("#before");
      if (beforeUrl) before.src = beforeUrl;
      else before.removeAttribute("src");
      root.querySelector("#after").src = afterUrl;
      setSplit(50);
      zoom.value = 1;
      setZoom(1);
    },
  };
}
