/*
 * Test-only stand-in for Windows' bcryptprimitives.dll, which Debian 12's Wine 8.0 lacks.
 * Rust's std (1.78 and later) gets its random numbers from ProcessPrng in that DLL; this shim
 * exports ProcessPrng on top of RtlGenRandom (advapi32's SystemFunction036), which Wine has.
 * scripts/windows.sh builds it with MinGW and puts it next to connector.exe for the Wine run.
 * Never shipped: real Windows (10 and later) has the DLL.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
