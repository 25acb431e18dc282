#!/usr/bin/env bash
# Pack an image-folder data set (default: the CIFAR-10 JPEG folders beside the checkout)
# into one gzip'd tar in .device/, a folder git ignores, so that a command run on a remote
# GPU machine can take it along with the working tree and unpack it there:
#   mkdir -p /tmp/data && tar -xzf .device/cifar10-jpeg.tar.gz -C /tmp/data
# The JPEG files themselves are the compact form (decoded arrays are about three times
# larger); any decoded cache inside the folder is left out.
set -euo pipefail
src="${1:-../shared/data/cifar10-jpeg}"
if [[ ! -d "$src/train" || ! -d "$src/test" ]]; then
    echo "pack_device_data.sh: $src must be an image folder with train/ and test/" >&2
    exit 1
fi
mkdir -p .device
name="$(basename "$src")"
tmp=".device/.$name.tar.gz.tmp"
tar -C "$(dirname "$src")" --exclude=.odenets-cache -czf "$tmp" "$name"
mv "$tmp" ".device/$name.tar.gz"
echo ".device/$name.tar.gz: $(du -h ".device/$name.tar.gz" | cut -f1)"
