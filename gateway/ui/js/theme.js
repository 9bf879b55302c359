// Applies the chosen colour theme before the page is drawn (a classic script in <head>, so
// there is no flash of the other theme). "auto" follows prefers-color-scheme.
(function applyTheme() {
  try {
    var theme = localStorage.getItem('bramble-theme');
    if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  } catch (e) {
    // Storage disabled: the system's theme applies.
  }
})();
