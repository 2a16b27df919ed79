-- wrk script: POST /v1/auth/login with the bench user's credentials (LOGIN_EMAIL / LOGIN_PASSWORD).
-- Every connection keeps one login in flight, so `-c 50` means 50 concurrent logins, continuously.
function init(args)
  body = string.format('{"email":"%s","password":"%s"}', os.getenv("LOGIN_EMAIL"), os.getenv("LOGIN_PASSWORD"))
end

function request()
  return wrk.format("POST", "/v1/auth/login", {["Content-Type"] = "application/json"}, body)
end
