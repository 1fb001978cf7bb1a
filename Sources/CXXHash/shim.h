#ifndef NOVACRON_CXXHASH_SHIM_H
#define NOVACRON_CXXHASH_SHIM_H
#include <xxhash.h>
#endif
