"""Azure Blob Storage through Microsoft's own client (azure-storage-blob), for the tests
that run our programs against Azurite: object_store cannot create containers, and reading
our uploads back with another client shows they are ordinary blobs.

  azure_blob.py ENDPOINT ACCOUNT KEY create-container NAME
  azure_blob.py ENDPOINT ACCOUNT KEY sha256 CONTAINER BLOB    -> {"size": N, "sha256": "..."}
  azure_blob.py ENDPOINT ACCOUNT KEY list CONTAINER [PREFIX]  -> ["name", ...]

ENDPOINT is the account's blob URL, e.g. http://127.0.0.1:10000/devstoreaccount1.
"""

import hashlib
import json
import sys

from azure.storage.blob import BlobServiceClient


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    endpoint, account, key, command, *args = argv[1:]
    client = BlobServiceClient(
        account_url=endpoint,
        credential={"account_name": account, "account_key": key},
    )
    if command == "create-container" and len(args) == 1:
        client.create_container(args[0])
    elif command == "sha256" and len(args) == 2:
        blob = client.get_blob_client(args[0], args[1])
        digest, size = hashlib.sha256(), 0
        for chunk in blob.download_blob().chunks():
            digest.update(chunk)
            size += len(chunk)
        print(json.dumps({"size": size, "sha256": digest.hexdigest()}))
    elif command == "list" and len(args) in (1, 2):
        container = client.get_container_client(args[0])
        prefix = args[1] if len(args) == 2 else None
        print(json.dumps([b.name for b in container.list_blobs(name_starts_with=prefix)]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
