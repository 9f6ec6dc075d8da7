#!/usr/bin/env python3
"""One XKS proxy call signed by botocore's SigV4Auth (service kms-xks-proxy),
for luna-cckm's tests: a signer that is not the project's own.

Usage: botocore_call.py URL REGION [CLIENT_CERT CLIENT_KEY CA_CERT]
The access key id and secret come in XKS_ACCESS_KEY_ID and XKS_SECRET (never
on a command line); the JSON body on stdin. Prints the answer's body, then
its status on a line of its own.
"""
import os
import ssl
import sys
import urllib.error
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def main() -> None:
    url, region = sys.argv[1], sys.argv[2]
    body = sys.stdin.buffer.read()
    credentials = Credentials(os.environ["XKS_ACCESS_KEY_ID"], os.environ["XKS_SECRET"])
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/json"})
    SigV4Auth(credentials, "kms-xks-proxy", region).add_auth(request)
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        if len(sys.argv) > 5:
            context.load_verify_locations(sys.argv[5])
            context.load_cert_chain(sys.argv[3], sys.argv[4])
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    prepared = urllib.request.Request(url, data=body, method="POST",
                                      headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, context=context, timeout=30) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    sys.stdout.write(text.decode())
    sys.stdout.write(f"\n{status}\n")


if __name__ == "__main__":
    main()
