"""trainboard's web process: settings, data model, queue protocol, JSON API and pages. Never imports torch."""
