// Relay admin: progressive enhancements only; every page works without JavaScript.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons: data-copy names the element whose text is copied.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
  // Confirmation before destructive forms.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Live regions: data-refresh is a same-origin URL returning server-rendered (escaped) rows.
  for (const region of document.querySelectorAll("[data-refresh]")) {
    const refresh = async () => {
      try {
        const response = await fetch(region.dataset.refresh, { credentials: "same-origin", cache: "no-store" });
        if (response.ok) region.innerHTML = await response.text();
      } catch (_) { /* keep the last rows; try again on the next tick */ }
    };
    setInterval(refresh, 2000);
  }
});
