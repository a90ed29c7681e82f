"""Real-browser tests: Chromium through Playwright (docs/browsers.md, the console)."""
