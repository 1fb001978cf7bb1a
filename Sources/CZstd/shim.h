#ifndef NOVACRON_CZSTD_SHIM_H
#define NOVACRON_CZSTD_SHIM_H
#define ZDICT_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zdict.h>
#endif
