{
  "targets": [
    {
      "target_name": "agentvpn_native",
      "sources": [
        "native/addon.c",
        "native/tun.c",
        "native/udp.c",
        "native/reader.c",
        "native/offload_checksum.c",
        "native/offload_split.c",
        "native/offload_coalesce.c",
        "native/offload_state.c",
        "native/offload_napi.c"
      ],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags_c": ["-std=c11"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      }
    },
    {
      "target_name": "agentvpn_crypto",
      "sources": ["native/crypto/blake2s.c", "native/crypto/aead-batch.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=c11"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      }
    },
    {
      "target_name": "agentvpn_notify",
      "sources": ["native/sd_notify.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags_c": ["-std=c11"]
    }
  ]
}
