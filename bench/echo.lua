-- wrk script for the echo test: every request POSTs the same 64 KiB body to /echo.
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
