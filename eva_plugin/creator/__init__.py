"""The creator: informativeness proxies, subset selection, evolvers and mixing."""
