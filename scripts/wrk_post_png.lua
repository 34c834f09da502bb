-- wrk script: POST samples/mnist-7.png as image/png (run wrk from the checkout's root).
-- wrk -t2 -c1000 -d10s --timeout 2s -s scripts/wrk_post_png.lua http://127.0.0.1:8000/v1/models/mnist-cnn:classify
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = assert(io.open("samples/mnist-7.png", "rb"))
wrk.body = f:read("*all")
f:close()
