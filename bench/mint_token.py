"""Prints an access token Portcullis accepts, signed with the HS256 secret given as argv[1].

The kid follows the server's rule for an environment secret (first 8 bytes, hex, of
SHA-256("portcullis jwt kid v1\\0" + secret)). VerifyToken checks the signature, the claims
and revocation; it needs no stored session, so benchmarks can verify without logging in.
"""
import base64, hashlib, hmac, json, sys, time

secret = sys.argv[1].encode()
kid = hashlib.sha256(b"portcullis jwt kid v1\0" + secret).hexdigest()[:16]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
claims = {"iss": "portcullis", "aud": "portcullis", "sub": "u1", "tid": "bench", "sid": "s1",
          "jti": "j1", "iat": now, "nbf": now, "exp": now + 3600, "roles": [], "scope": "api"}
signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
print(signing + "." + b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest()))
