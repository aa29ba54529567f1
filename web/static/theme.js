// Runs before the first paint (a classic script in <head>) so a remembered light
// theme never flashes dark. Dark is the default.
(function () {
  try {
    if (localStorage.getItem("md-theme") === "light") document.documentElement.dataset.theme = "light";
  } catch (e) {
    /* storage disabled: stay dark */
  }
})();
