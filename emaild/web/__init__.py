"""The Klein web site: links, unsubscribe, LTI, pages, API, health."""
