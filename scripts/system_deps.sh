#!/usr/bin/env bash
# Installs the Debian packages the browser (Chromium), PACS (Orthanc + DICOMweb) and reverse-proxy (nginx) tests need,
# only when they are missing and only where we may (root with apt-get). Elsewhere those tests skip
# with a message naming the missing package.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || echo "warning: could not install ${need[*]}; the tests that need them will skip"
    # Debian's orthanc package starts a system service; the tests run their own instance.
    (service orthanc stop || true) >/dev/null 2>&1
    # Likewise nginx's service: the reverse-proxy test runs its own, unprivileged, on free ports.
    (service nginx stop || true) >/dev/null 2>&1
else
    echo "warning: ${need[*]} missing and not root; browser/PACS/proxy tests will skip"
fi
exit 0
