/* Native fast paths of plantwatch's hot loops; every caller keeps a pure-Python fallback.
 *
 * parse_json_run(values, features, allow_extra, max_batch)
 *     The JSON readings of a run of Kafka messages, parsed straight into columns, or None when
 *     the run is not provably valid (the caller then takes its Python path, which has the final
 *     word on every rejection). See monitor/records.py (Decoder._fast_json) for the contract.
 *
 * message_runs(values, max_bytes, binary)
 *     Maximal runs of JSON, binary and other messages (monitor/records.py, decode_many).
 *
 * parse_binary_run(values, n_features, fingerprint, ...)
 *     The readings of a run of binary messages, or None when the run is not provably valid
 *     (monitor/records.py, Decoder._fast_binary).
 *
 * append_readings(assets, index, ts, values, offsets, slabs, state, pending, ...)
 *     Readings of many assets appended to the window store's rings in one pass, each window
 *     they complete copied out once (monitor/windows.py, WindowStore.append_many).
 *
 * gather_windows(seq, starts, length, out)
 *     out[k] = seq[starts[k] : starts[k] + length], one memcpy per window
 *     (monitor/windows.py, _gather).
 *
 * Plain CPython C API and the buffer protocol only: no numpy headers, no other libraries.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* -- bytes and numbers ------------------------------------------------------------------- */

typedef const unsigned char *cur_t;

#define IS_DIGIT(c) ((unsigned char)((c) - '0') < 10)

/* Nesting allowed in skipped (ignored) JSON values, far below the depth at which json.loads
 * could give up with a RecursionError. */
#define MAX_DEPTH 32
/* Digits of an ignored integer: json.loads converts it to int, which refuses more digits than
 * sys.get_int_max_str_digits() (at least 640 when set). */
#define MAX_SKIPPED_INT_DIGITS 640
/* Integer sensor values of more digits are >= 1e39, beyond float32 anyway. */
#define MAX_INT_VALUE_DIGITS 39
/* The first message's readings are allocated at once; a GIL release pays off above this. */
#define GIL_RELEASE_BYTES (64 * 1024)

/* What a byte means inside a JSON string. */
enum { S_PLAIN = 0, S_QUOTE, S_ESCAPE, S_BAD, S_UTF8_2, S_UTF8_3, S_UTF8_4 };
static unsigned char string_class[256];

static void
init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        unsigned char k;
        if (c < 0x20)
            k = S_BAD; /* control characters, and the NUL that ends every bytes object */
        else if (c == '"')
            k = S_QUOTE;
        else if (c == '\\')
            k = S_ESCAPE;
        else if (c < 0x80)
            k = S_PLAIN;
        else if (c >= 0xC2 && c <= 0xDF)
            k = S_UTF8_2;
        else if (c >= 0xE0 && c <= 0xEF)
            k = S_UTF8_3;
        else if (c >= 0xF0 && c <= 0xF4)
            k = S_UTF8_4;
        else
            k = S_BAD; /* continuation bytes, overlong leads C0/C1, F5..FF */
        string_class[c] = k;
    }
}

static inline cur_t
skip_ws(cur_t p)
{
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
        p++;
    return p;
}

static inline int
is_cont(unsigned c)
{
    return (c & 0xC0) == 0x80;
}

static inline int
is_hex(unsigned c)
{
    return IS_DIGIT(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* The rest of a string whose opening quote is just before p: returns the position after the
 * closing quote, or NULL if the string is not valid JSON of strictly valid UTF-8 (as Python's
 * "utf-8" codec: no overlong forms, no surrogates, nothing above U+10FFFF), or if it holds an
 * escape and escapes is 0. Every bytes object ends with a NUL, which stops the scan (each
 * check below looks at one byte at a time, so none reads past it). */
static cur_t
scan_string(cur_t p, int escapes)
{
    for (;;) {
        unsigned c;
        while (string_class[*p] == S_PLAIN)
            p++;
        c = *p;
        switch (string_class[c]) {
        case S_QUOTE:
            return p + 1;
        case S_ESCAPE:
            if (!escapes)
                return NULL;
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                break;
            case 'u': /* json.loads takes lone surrogates too: any four hex digits */
                if (!(is_hex(p[2]) && is_hex(p[3]) && is_hex(p[4]) && is_hex(p[5])))
                    return NULL;
                p += 6;
                break;
            default:
                return NULL;
            }
            break;
        case S_UTF8_2:
            if (!is_cont(p[1]))
                return NULL;
            p += 2;
            break;
        case S_UTF8_3: {
            unsigned c1 = p[1];
            int ok = c == 0xE0   ? (c1 >= 0xA0 && c1 <= 0xBF)  /* no overlong forms */
                     : c == 0xED ? (c1 >= 0x80 && c1 <= 0x9F)  /* no surrogates */
                                 : is_cont(c1);
            if (!ok || !is_cont(p[2]))
                return NULL;
            p += 3;
            break;
        }
        case S_UTF8_4: {
            unsigned c1 = p[1];
            int ok = c == 0xF0   ? (c1 >= 0x90 && c1 <= 0xBF)  /* no overlong forms */
                     : c == 0xF4 ? (c1 >= 0x80 && c1 <= 0x8F)  /* nothing above U+10FFFF */
                                 : is_cont(c1);
            if (!ok || !is_cont(p[2]) || !is_cont(p[3]))
                return NULL;
            p += 4;
            break;
        }
        default:
            return NULL;
        }
    }
}

/* A JSON number token (json.loads' grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?).
 * Sets *is_float (fraction or exponent present) and *int_digits (digits before any '.'). */
static cur_t
scan_number(cur_t p, int *is_float, Py_ssize_t *int_digits)
{
    cur_t first;
    if (*p == '-')
        p++;
    first = p;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        do
            p++;
        while (IS_DIGIT(*p));
    else
        return NULL;
    *int_digits = p - first;
    *is_float = 0;
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p))
            return NULL;
        do
            p++;
        while (IS_DIGIT(*p));
        *is_float = 1;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!IS_DIGIT(*p))
            return NULL;
        do
            p++;
        while (IS_DIGIT(*p));
        *is_float = 1;
    }
    return p;
}

static cur_t
match_literal(cur_t p, const char *word)
{
    for (; *word; word++, p++)
        if (*p != (unsigned char)*word)
            return NULL;
    return p;
}

/* Any JSON value json.loads accepts (NaN and Infinity included), which the caller ignores. */
static cur_t
skip_value(cur_t p, int depth)
{
    switch (*p) {
    case '"':
        return scan_string(p + 1, 1);
    case '{':
        if (depth >= MAX_DEPTH)
            return NULL;
        p = skip_ws(p + 1);
        if (*p == '}')
            return p + 1;
        for (;;) {
            if (*p != '"' || (p = scan_string(p + 1, 1)) == NULL)
                return NULL;
            p = skip_ws(p);
            if (*p != ':' || (p = skip_value(skip_ws(p + 1), depth + 1)) == NULL)
                return NULL;
            p = skip_ws(p);
            if (*p == '}')
                return p + 1;
            if (*p != ',')
                return NULL;
            p = skip_ws(p + 1);
        }
    case '[':
        if (depth >= MAX_DEPTH)
            return NULL;
        p = skip_ws(p + 1);
        if (*p == ']')
            return p + 1;
        for (;;) {
            if ((p = skip_value(p, depth + 1)) == NULL)
                return NULL;
            p = skip_ws(p);
            if (*p == ']')
                return p + 1;
            if (*p != ',')
                return NULL;
            p = skip_ws(p + 1);
        }
    case 't':
        return match_literal(p, "true");
    case 'f':
        return match_literal(p, "false");
    case 'n':
        return match_literal(p, "null");
    case 'N':
        return match_literal(p, "NaN");
    case 'I':
        return match_literal(p, "Infinity");
    default: {
        int is_float;
        Py_ssize_t int_digits;
        if (p[0] == '-' && p[1] == 'I')
            return match_literal(p, "-Infinity");
        p = scan_number(p, &is_float, &int_digits);
        if (p == NULL || (!is_float && int_digits > MAX_SKIPPED_INT_DIGITS))
            return NULL;
        return p;
    }
    }
}

/* -- decimal to double, correctly rounded ------------------------------------------------ */

/* 128-bit mantissas of 10^e for e in [POW10_MIN, POW10_MAX], rounded down and normalised so
 * that the top bit is set (the table of Go's strconv.eiselLemire64, restricted to the
 * exponents of values that can fit a float32). Generated with Python:
 *     m = 10**e << 128 >> (10**e).bit_length()          (e >= 0; exact here)
 *     m = (1 << k) // 10**-e, the k that puts m in [2**127, 2**128)        (e < 0)
 */
#define POW10_MIN (-80)
#define POW10_MAX 40
static const struct {
    uint64_t hi, lo;
} pow10_128[] = {
    {0x97C560BA6B0919A5ULL, 0xDCCD879FC967D41AULL}, /* 1e-80 */
    {0xBDB6B8E905CB600FULL, 0x5400E987BBC1C920ULL}, /* 1e-79 */
    {0xED246723473E3813ULL, 0x290123E9AAB23B68ULL}, /* 1e-78 */
    {0x9436C0760C86E30BULL, 0xF9A0B6720AAF6521ULL}, /* 1e-77 */
    {0xB94470938FA89BCEULL, 0xF808E40E8D5B3E69ULL}, /* 1e-76 */
    {0xE7958CB87392C2C2ULL, 0xB60B1D1230B20E04ULL}, /* 1e-75 */
    {0x90BD77F3483BB9B9ULL, 0xB1C6F22B5E6F48C2ULL}, /* 1e-74 */
    {0xB4ECD5F01A4AA828ULL, 0x1E38AEB6360B1AF3ULL}, /* 1e-73 */
    {0xE2280B6C20DD5232ULL, 0x25C6DA63C38DE1B0ULL}, /* 1e-72 */
    {0x8D590723948A535FULL, 0x579C487E5A38AD0EULL}, /* 1e-71 */
    {0xB0AF48EC79ACE837ULL, 0x2D835A9DF0C6D851ULL}, /* 1e-70 */
    {0xDCDB1B2798182244ULL, 0xF8E431456CF88E65ULL}, /* 1e-69 */
    {0x8A08F0F8BF0F156BULL, 0x1B8E9ECB641B58FFULL}, /* 1e-68 */
    {0xAC8B2D36EED2DAC5ULL, 0xE272467E3D222F3FULL}, /* 1e-67 */
    {0xD7ADF884AA879177ULL, 0x5B0ED81DCC6ABB0FULL}, /* 1e-66 */
    {0x86CCBB52EA94BAEAULL, 0x98E947129FC2B4E9ULL}, /* 1e-65 */
    {0xA87FEA27A539E9A5ULL, 0x3F2398D747B36224ULL}, /* 1e-64 */
    {0xD29FE4B18E88640EULL, 0x8EEC7F0D19A03AADULL}, /* 1e-63 */
    {0x83A3EEEEF9153E89ULL, 0x1953CF68300424ACULL}, /* 1e-62 */
    {0xA48CEAAAB75A8E2BULL, 0x5FA8C3423C052DD7ULL}, /* 1e-61 */
    {0xCDB02555653131B6ULL, 0x3792F412CB06794DULL}, /* 1e-60 */
    {0x808E17555F3EBF11ULL, 0xE2BBD88BBEE40BD0ULL}, /* 1e-59 */
    {0xA0B19D2AB70E6ED6ULL, 0x5B6ACEAEAE9D0EC4ULL}, /* 1e-58 */
    {0xC8DE047564D20A8BULL, 0xF245825A5A445275ULL}, /* 1e-57 */
    {0xFB158592BE068D2EULL, 0xEED6E2F0F0D56712ULL}, /* 1e-56 */
    {0x9CED737BB6C4183DULL, 0x55464DD69685606BULL}, /* 1e-55 */
    {0xC428D05AA4751E4CULL, 0xAA97E14C3C26B886ULL}, /* 1e-54 */
    {0xF53304714D9265DFULL, 0xD53DD99F4B3066A8ULL}, /* 1e-53 */
    {0x993FE2C6D07B7FABULL, 0xE546A8038EFE4029ULL}, /* 1e-52 */
    {0xBF8FDB78849A5F96ULL, 0xDE98520472BDD033ULL}, /* 1e-51 */
    {0xEF73D256A5C0F77CULL, 0x963E66858F6D4440ULL}, /* 1e-50 */
    {0x95A8637627989AADULL, 0xDDE7001379A44AA8ULL}, /* 1e-49 */
    {0xBB127C53B17EC159ULL, 0x5560C018580D5D52ULL}, /* 1e-48 */
    {0xE9D71B689DDE71AFULL, 0xAAB8F01E6E10B4A6ULL}, /* 1e-47 */
    {0x9226712162AB070DULL, 0xCAB3961304CA70E8ULL}, /* 1e-46 */
    {0xB6B00D69BB55C8D1ULL, 0x3D607B97C5FD0D22ULL}, /* 1e-45 */
    {0xE45C10C42A2B3B05ULL, 0x8CB89A7DB77C506AULL}, /* 1e-44 */
    {0x8EB98A7A9A5B04E3ULL, 0x77F3608E92ADB242ULL}, /* 1e-43 */
    {0xB267ED1940F1C61CULL, 0x55F038B237591ED3ULL}, /* 1e-42 */
    {0xDF01E85F912E37A3ULL, 0x6B6C46DEC52F6688ULL}, /* 1e-41 */
    {0x8B61313BBABCE2C6ULL, 0x2323AC4B3B3DA015ULL}, /* 1e-40 */
    {0xAE397D8AA96C1B77ULL, 0xABEC975E0A0D081AULL}, /* 1e-39 */
    {0xD9C7DCED53C72255ULL, 0x96E7BD358C904A21ULL}, /* 1e-38 */
    {0x881CEA14545C7575ULL, 0x7E50D64177DA2E54ULL}, /* 1e-37 */
    {0xAA242499697392D2ULL, 0xDDE50BD1D5D0B9E9ULL}, /* 1e-36 */
    {0xD4AD2DBFC3D07787ULL, 0x955E4EC64B44E864ULL}, /* 1e-35 */
    {0x84EC3C97DA624AB4ULL, 0xBD5AF13BEF0B113EULL}, /* 1e-34 */
    {0xA6274BBDD0FADD61ULL, 0xECB1AD8AEACDD58EULL}, /* 1e-33 */
    {0xCFB11EAD453994BAULL, 0x67DE18EDA5814AF2ULL}, /* 1e-32 */
    {0x81CEB32C4B43FCF4ULL, 0x80EACF948770CED7ULL}, /* 1e-31 */
    {0xA2425FF75E14FC31ULL, 0xA1258379A94D028DULL}, /* 1e-30 */
    {0xCAD2F7F5359A3B3EULL, 0x096EE45813A04330ULL}, /* 1e-29 */
    {0xFD87B5F28300CA0DULL, 0x8BCA9D6E188853FCULL}, /* 1e-28 */
    {0x9E74D1B791E07E48ULL, 0x775EA264CF55347DULL}, /* 1e-27 */
    {0xC612062576589DDAULL, 0x95364AFE032A819DULL}, /* 1e-26 */
    {0xF79687AED3EEC551ULL, 0x3A83DDBD83F52204ULL}, /* 1e-25 */
    {0x9ABE14CD44753B52ULL, 0xC4926A9672793542ULL}, /* 1e-24 */
    {0xC16D9A0095928A27ULL, 0x75B7053C0F178293ULL}, /* 1e-23 */
    {0xF1C90080BAF72CB1ULL, 0x5324C68B12DD6338ULL}, /* 1e-22 */
    {0x971DA05074DA7BEEULL, 0xD3F6FC16EBCA5E03ULL}, /* 1e-21 */
    {0xBCE5086492111AEAULL, 0x88F4BB1CA6BCF584ULL}, /* 1e-20 */
    {0xEC1E4A7DB69561A5ULL, 0x2B31E9E3D06C32E5ULL}, /* 1e-19 */
    {0x9392EE8E921D5D07ULL, 0x3AFF322E62439FCFULL}, /* 1e-18 */
    {0xB877AA3236A4B449ULL, 0x09BEFEB9FAD487C2ULL}, /* 1e-17 */
    {0xE69594BEC44DE15BULL, 0x4C2EBE687989A9B3ULL}, /* 1e-16 */
    {0x901D7CF73AB0ACD9ULL, 0x0F9D37014BF60A10ULL}, /* 1e-15 */
    {0xB424DC35095CD80FULL, 0x538484C19EF38C94ULL}, /* 1e-14 */
    {0xE12E13424BB40E13ULL, 0x2865A5F206B06FB9ULL}, /* 1e-13 */
    {0x8CBCCC096F5088CBULL, 0xF93F87B7442E45D3ULL}, /* 1e-12 */
    {0xAFEBFF0BCB24AAFEULL, 0xF78F69A51539D748ULL}, /* 1e-11 */
    {0xDBE6FECEBDEDD5BEULL, 0xB573440E5A884D1BULL}, /* 1e-10 */
    {0x89705F4136B4A597ULL, 0x31680A88F8953030ULL}, /* 1e-9 */
    {0xABCC77118461CEFCULL, 0xFDC20D2B36BA7C3DULL}, /* 1e-8 */
    {0xD6BF94D5E57A42BCULL, 0x3D32907604691B4CULL}, /* 1e-7 */
    {0x8637BD05AF6C69B5ULL, 0xA63F9A49C2C1B10FULL}, /* 1e-6 */
    {0xA7C5AC471B478423ULL, 0x0FCF80DC33721D53ULL}, /* 1e-5 */
    {0xD1B71758E219652BULL, 0xD3C36113404EA4A8ULL}, /* 1e-4 */
    {0x83126E978D4FDF3BULL, 0x645A1CAC083126E9ULL}, /* 1e-3 */
    {0xA3D70A3D70A3D70AULL, 0x3D70A3D70A3D70A3ULL}, /* 1e-2 */
    {0xCCCCCCCCCCCCCCCCULL, 0xCCCCCCCCCCCCCCCCULL}, /* 1e-1 */
    {0x8000000000000000ULL, 0x0000000000000000ULL}, /* 1e0 */
    {0xA000000000000000ULL, 0x0000000000000000ULL}, /* 1e1 */
    {0xC800000000000000ULL, 0x0000000000000000ULL}, /* 1e2 */
    {0xFA00000000000000ULL, 0x0000000000000000ULL}, /* 1e3 */
    {0x9C40000000000000ULL, 0x0000000000000000ULL}, /* 1e4 */
    {0xC350000000000000ULL, 0x0000000000000000ULL}, /* 1e5 */
    {0xF424000000000000ULL, 0x0000000000000000ULL}, /* 1e6 */
    {0x9896800000000000ULL, 0x0000000000000000ULL}, /* 1e7 */
    {0xBEBC200000000000ULL, 0x0000000000000000ULL}, /* 1e8 */
    {0xEE6B280000000000ULL, 0x0000000000000000ULL}, /* 1e9 */
    {0x9502F90000000000ULL, 0x0000000000000000ULL}, /* 1e10 */
    {0xBA43B74000000000ULL, 0x0000000000000000ULL}, /* 1e11 */
    {0xE8D4A51000000000ULL, 0x0000000000000000ULL}, /* 1e12 */
    {0x9184E72A00000000ULL, 0x0000000000000000ULL}, /* 1e13 */
    {0xB5E620F480000000ULL, 0x0000000000000000ULL}, /* 1e14 */
    {0xE35FA931A0000000ULL, 0x0000000000000000ULL}, /* 1e15 */
    {0x8E1BC9BF04000000ULL, 0x0000000000000000ULL}, /* 1e16 */
    {0xB1A2BC2EC5000000ULL, 0x0000000000000000ULL}, /* 1e17 */
    {0xDE0B6B3A76400000ULL, 0x0000000000000000ULL}, /* 1e18 */
    {0x8AC7230489E80000ULL, 0x0000000000000000ULL}, /* 1e19 */
    {0xAD78EBC5AC620000ULL, 0x0000000000000000ULL}, /* 1e20 */
    {0xD8D726B7177A8000ULL, 0x0000000000000000ULL}, /* 1e21 */
    {0x878678326EAC9000ULL, 0x0000000000000000ULL}, /* 1e22 */
    {0xA968163F0A57B400ULL, 0x0000000000000000ULL}, /* 1e23 */
    {0xD3C21BCECCEDA100ULL, 0x0000000000000000ULL}, /* 1e24 */
    {0x84595161401484A0ULL, 0x0000000000000000ULL}, /* 1e25 */
    {0xA56FA5B99019A5C8ULL, 0x0000000000000000ULL}, /* 1e26 */
    {0xCECB8F27F4200F3AULL, 0x0000000000000000ULL}, /* 1e27 */
    {0x813F3978F8940984ULL, 0x4000000000000000ULL}, /* 1e28 */
    {0xA18F07D736B90BE5ULL, 0x5000000000000000ULL}, /* 1e29 */
    {0xC9F2C9CD04674EDEULL, 0xA400000000000000ULL}, /* 1e30 */
    {0xFC6F7C4045812296ULL, 0x4D00000000000000ULL}, /* 1e31 */
    {0x9DC5ADA82B70B59DULL, 0xF020000000000000ULL}, /* 1e32 */
    {0xC5371912364CE305ULL, 0x6C28000000000000ULL}, /* 1e33 */
    {0xF684DF56C3E01BC6ULL, 0xC732000000000000ULL}, /* 1e34 */
    {0x9A130B963A6C115CULL, 0x3C7F400000000000ULL}, /* 1e35 */
    {0xC097CE7BC90715B3ULL, 0x4B9F100000000000ULL}, /* 1e36 */
    {0xF0BDC21ABB48DB20ULL, 0x1E86D40000000000ULL}, /* 1e37 */
    {0x96769950B50D88F4ULL, 0x1314448000000000ULL}, /* 1e38 */
    {0xBC143FA4E250EB31ULL, 0x17D955A000000000ULL}, /* 1e39 */
    {0xEB194F8E1AE525FDULL, 0x5DCFAB0800000000ULL}, /* 1e40 */
};

static const double exact_pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline uint64_t
mul_64x64(uint64_t a, uint64_t b, uint64_t *lo)
{
#if defined(__SIZEOF_INT128__)
    unsigned __int128 r = (unsigned __int128)a * b;
    *lo = (uint64_t)r;
    return (uint64_t)(r >> 64);
#else
    uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    *lo = (mid << 32) | (uint32_t)p00;
    return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
#endif
}

static inline int
leading_zeros(uint64_t x) /* x != 0 */
{
#if defined(__GNUC__)
    return __builtin_clzll(x);
#else
    int n = 0;
    while (!(x & 0x8000000000000000ULL)) {
        x <<= 1;
        n++;
    }
    return n;
#endif
}

/* man * 10^exp10 (man != 0, at most 19 digits, so exact) correctly rounded to the nearest
 * double, ties to even; returns 0 where it cannot decide cheaply (the caller then asks
 * PyOS_string_to_double, Python's own correctly rounded conversion). */
static int
decimal_to_double(uint64_t man, int64_t exp10, double *out)
{
    uint64_t x_hi, x_lo, mantissa, exp2, bits;
    int64_t log2_10;
    int clz, msb;
#if FLT_EVAL_METHOD == 0
    /* Clinger's fast path: both operands exact, so one IEEE operation rounds correctly. */
    if (man <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        double m = (double)man;
        *out = exp10 < 0 ? m / exact_pow10[-exp10] : m * exact_pow10[exp10];
        return 1;
    }
#endif
    /* Eisel-Lemire, as Go's strconv.eiselLemire64 (https://nigeltao.github.io/blog/2020/
     * eisel-lemire.html): a 64x128-bit product pins the result down or says it cannot. */
    if (exp10 < POW10_MIN || exp10 > POW10_MAX)
        return 0;
    clz = leading_zeros(man);
    man <<= clz;
    /* floor(exp10 * log2(10)), spelled without right-shifting a negative number */
    log2_10 = 217706 * exp10;
    log2_10 = log2_10 >= 0 ? log2_10 >> 16 : -((-log2_10 + 65535) >> 16);
    exp2 = (uint64_t)(log2_10 + 64 + 1023) - (uint64_t)clz;
    x_hi = mul_64x64(man, pow10_128[exp10 - POW10_MIN].hi, &x_lo);
    if ((x_hi & 0x1FF) == 0x1FF && x_lo + man < man) {
        uint64_t y_lo, y_hi = mul_64x64(man, pow10_128[exp10 - POW10_MIN].lo, &y_lo);
        uint64_t merged_hi = x_hi, merged_lo = x_lo + y_hi;
        if (merged_lo < x_lo)
            merged_hi++;
        if ((merged_hi & 0x1FF) == 0x1FF && merged_lo + 1 == 0 && y_lo + man < man)
            return 0;
        x_hi = merged_hi;
        x_lo = merged_lo;
    }
    msb = (int)(x_hi >> 63);
    mantissa = x_hi >> (msb + 9);
    exp2 -= (uint64_t)(1 ^ msb);
    if (x_lo == 0 && (x_hi & 0x1FF) == 0 && (mantissa & 3) == 1)
        return 0; /* halfway between two doubles, maybe */
    mantissa += mantissa & 1;
    mantissa >>= 1;
    if (mantissa >> 53) {
        mantissa >>= 1;
        exp2 += 1;
    }
    if (exp2 - 1 >= 0x7FF - 1)
        return 0; /* subnormal or overflow */
    bits = exp2 << 52 | (mantissa & 0x000FFFFFFFFFFFFFULL);
    memcpy(out, &bits, sizeof bits);
    return 1;
}

/* The token [start, end) through Python's float() conversion; 0 if it does not take it all. */
static int
slow_double(cur_t start, cur_t end, double *out)
{
    char *stop = NULL;
    /* With no overflow exception, out-of-range tokens give +-inf (or 0), as float() does. */
    double d = PyOS_string_to_double((const char *)start, &stop, NULL);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if ((cur_t)stop != end)
        return 0;
    *out = d;
    return 1;
}

/* A sensor value: a JSON number as json.loads then np.float64 would make it. An integer token
 * is a Python int (so "-0" is +0.0), converted exactly-rounded; a fraction or exponent makes
 * a float (so "-0.0" is -0.0). Returns the end of the token, or NULL for anything else. */
static cur_t
parse_number(cur_t p, double *out)
{
    cur_t start = p;
    int neg = 0, is_float = 0, digits = 0; /* significant digits, counted past 19 */
    uint64_t man = 0;
    int64_t exp10 = 0;
    double d;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9') {
        do {
            if (digits < 19)
                man = man * 10 + (uint64_t)(*p - '0');
            digits++; /* more than 19: the slow path reads the token again */
            p++;
        } while (IS_DIGIT(*p));
    }
    else
        return NULL;
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p))
            return NULL;
        is_float = 1;
        do {
            if (digits == 0 && *p == '0') /* leading zeros of 0.00123 */
                exp10--;
            else {
                if (digits < 19) {
                    man = man * 10 + (uint64_t)(*p - '0');
                    exp10--;
                }
                digits++;
            }
            p++;
        } while (IS_DIGIT(*p));
    }
    if (*p == 'e' || *p == 'E') {
        int64_t e = 0;
        int eneg = 0;
        p++;
        if (*p == '+')
            p++;
        else if (*p == '-') {
            eneg = 1;
            p++;
        }
        if (!IS_DIGIT(*p))
            return NULL;
        is_float = 1;
        do {
            if (e < 100000) /* beyond that the table misses anyway: the slow path decides */
                e = e * 10 + (*p - '0');
            p++;
        } while (IS_DIGIT(*p));
        exp10 += eneg ? -e : e;
    }
    if (!is_float) {
        if (digits <= 19)
            /* int -> float: exact below 2^53, correctly rounded above (as int.__float__) */
            d = man == 0 ? 0.0 : neg ? -(double)man : (double)man;
        else if (digits > MAX_INT_VALUE_DIGITS || !slow_double(start, p, &d))
            return NULL;
    }
    else if (digits == 0)
        d = neg ? -0.0 : 0.0;
    else if (digits <= 19 && decimal_to_double(man, exp10, &d)) {
        if (neg)
            d = -d;
    }
    else if (!slow_double(start, p, &d))
        return NULL;
    *out = d;
    return p;
}

/* A JSON integer of at most 18 digits (anything longer is out of the epoch-ms range). */
static cur_t
parse_int64(cur_t p, int64_t *out)
{
    int neg = 0, digits = 0;
    int64_t v = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9') {
        do {
            if (++digits > 18)
                return NULL;
            v = v * 10 + (*p - '0');
            p++;
        } while (IS_DIGIT(*p));
    }
    else
        return NULL;
    if (*p == '.' || *p == 'e' || *p == 'E')
        return NULL; /* a float: decode() rejects it as a timestamp */
    *out = neg ? -v : v;
    return p;
}

/* -- parse_json_run ---------------------------------------------------------------------- */

#define ASSET_CACHE 64

typedef struct {
    /* The model's features, UTF-8, and an open-addressing table: index + 1, 0 = empty. */
    Py_ssize_t nf;
    const char **names;
    Py_ssize_t *name_len;
    int32_t *table;
    size_t mask;
    /* Per feature, the reading (generation) that last set it: duplicate and missing sensors. */
    uint32_t *stamp;
    uint32_t generation;
    int allow_extra;
    /* Readings so far: asset str objects; int64 timestamps and float32 rows in bytearrays. */
    PyObject *assets;
    PyObject *ts;
    PyObject *values;
    Py_ssize_t n, capacity;
    /* Asset ids repeat: the same str object, allocated and hashed once per run. */
    struct {
        cur_t ptr;
        Py_ssize_t len;
        PyObject *str; /* borrowed: held by assets */
    } cache[ASSET_CACHE];
} Run;

static inline uint64_t
fnv1a(cur_t s, Py_ssize_t len)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    for (Py_ssize_t i = 0; i < len; i++)
        h = (h ^ s[i]) * 0x100000001B3ULL;
    return h;
}

/* The feature index of a key, or -1. Keys mostly come in manifest order: try the next one. */
static inline Py_ssize_t
feature_index(const Run *r, cur_t key, Py_ssize_t len, Py_ssize_t next)
{
    size_t slot;
    if (next < r->nf && r->name_len[next] == len && memcmp(r->names[next], key, len) == 0)
        return next;
    for (slot = fnv1a(key, len) & r->mask; r->table[slot]; slot = (slot + 1) & r->mask) {
        Py_ssize_t j = r->table[slot] - 1;
        if (r->name_len[j] == len && memcmp(r->names[j], key, len) == 0)
            return j;
    }
    return -1;
}

/* A sensor value: a number that is finite and within float32's range once a double (as
 * np.abs(np.array(rows, np.float64)) <= float32 max), stored as the float32 it rounds to. */
static inline cur_t
parse_sensor(cur_t p, float *out)
{
    double d;
    p = parse_number(p, &d);
    if (p == NULL || !(fabs(d) <= (double)FLT_MAX)) /* NaN fails too */
        return NULL;
    *out = (float)d;
    return p;
}

/* "values": a list of exactly nf numbers in feature order, or an object with each feature
 * once (unknown sensors: skipped with allow_extra, else not provable). */
static cur_t
parse_values(Run *r, cur_t p, float *row, int depth)
{
    Py_ssize_t j, found = 0, next = 0;
    uint32_t generation;
    if (*p == '[') {
        p = skip_ws(p + 1);
        for (j = 0; j < r->nf; j++) {
            if (j) {
                if (*p != ',')
                    return NULL;
                p = skip_ws(p + 1);
            }
            if ((p = parse_sensor(p, &row[j])) == NULL)
                return NULL;
            p = skip_ws(p);
        }
        return *p == ']' ? p + 1 : NULL;
    }
    if (*p != '{')
        return NULL;
    generation = ++r->generation;
    if (generation == 0) { /* wrapped: forget every stamp */
        memset(r->stamp, 0, (size_t)r->nf * sizeof *r->stamp);
        generation = r->generation = 1;
    }
    p = skip_ws(p + 1);
    if (*p == '}')
        return NULL; /* no sensor at all */
    for (;;) {
        cur_t key = p + 1, end;
        if (*p != '"' || (end = scan_string(key, 0)) == NULL)
            return NULL;
        p = skip_ws(end);
        if (*p != ':')
            return NULL;
        p = skip_ws(p + 1);
        j = feature_index(r, key, end - 1 - key, next);
        if (j < 0) {
            if (!r->allow_extra || (p = skip_value(p, depth + 1)) == NULL)
                return NULL;
        }
        else {
            if (r->stamp[j] == generation) /* json.loads keeps the last: not ours to judge */
                return NULL;
            r->stamp[j] = generation;
            found++;
            next = j + 1;
            if ((p = parse_sensor(p, &row[j])) == NULL)
                return NULL;
        }
        p = skip_ws(p);
        if (*p == '}')
            break;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1);
    }
    return found == r->nf ? p + 1 : NULL;
}

static int
reserve_row(Run *r)
{
    Py_ssize_t capacity;
    if (r->n < r->capacity)
        return 0;
    if (r->capacity > PY_SSIZE_T_MAX / 2 / 8 / (Py_ssize_t)sizeof(float) / r->nf) {
        PyErr_NoMemory();
        return -1;
    }
    capacity = r->capacity * 2;
    if (PyByteArray_Resize(r->ts, capacity * (Py_ssize_t)sizeof(int64_t)) < 0 ||
        PyByteArray_Resize(r->values, capacity * r->nf * (Py_ssize_t)sizeof(float)) < 0)
        return -1;
    r->capacity = capacity;
    return 0;
}

static int
append_asset(Run *r, cur_t s, Py_ssize_t len)
{
    size_t slot = fnv1a(s, len) & (ASSET_CACHE - 1);
    PyObject *str = r->cache[slot].str;
    if (str != NULL && r->cache[slot].len == len && memcmp(r->cache[slot].ptr, s, len) == 0)
        return PyList_Append(r->assets, str);
    str = PyUnicode_DecodeUTF8((const char *)s, len, NULL); /* validated: cannot fail on data */
    if (str == NULL || PyList_Append(r->assets, str) < 0) {
        Py_XDECREF(str);
        return -1;
    }
    Py_DECREF(str);
    r->cache[slot].ptr = s;
    r->cache[slot].len = len;
    r->cache[slot].str = str;
    return 0;
}

/* One reading object (p at its '{'): asset, ts and values each exactly once, keys without
 * escapes; other fields skipped after validation. Appends it to the run. */
static cur_t
parse_reading(Run *r, cur_t p, int depth)
{
    cur_t asset = NULL;
    Py_ssize_t asset_len = 0;
    int have_ts = 0, have_values = 0;
    int64_t ts = 0;
    float *row;
    if (reserve_row(r) < 0)
        return NULL;
    row = (float *)PyByteArray_AS_STRING(r->values) + r->n * r->nf;
    p = skip_ws(p + 1);
    for (;;) {
        cur_t key = p + 1, end;
        Py_ssize_t len;
        if (*p != '"' || (end = scan_string(key, 0)) == NULL)
            return NULL;
        len = end - 1 - key;
        p = skip_ws(end);
        if (*p != ':')
            return NULL;
        p = skip_ws(p + 1);
        if (len == 5 && memcmp(key, "asset", 5) == 0) {
            if (asset != NULL || *p != '"' || (end = scan_string(p + 1, 0)) == NULL)
                return NULL;
            asset = p + 1;
            asset_len = end - 1 - asset;
            p = end;
        }
        else if (len == 2 && key[0] == 't' && key[1] == 's') {
            if (have_ts || (p = parse_int64(p, &ts)) == NULL)
                return NULL;
            have_ts = 1;
        }
        else if (len == 6 && memcmp(key, "values", 6) == 0) {
            if (have_values || (p = parse_values(r, p, row, depth)) == NULL)
                return NULL;
            have_values = 1;
        }
        else if ((p = skip_value(p, depth)) == NULL)
            return NULL;
        p = skip_ws(p);
        if (*p == '}')
            break;
        if (*p != ',')
            return NULL;
        p = skip_ws(p + 1);
    }
    if (asset == NULL || !have_ts || !have_values)
        return NULL;
    if (append_asset(r, asset, asset_len) < 0)
        return NULL;
    memcpy(PyByteArray_AS_STRING(r->ts) + r->n * (Py_ssize_t)sizeof(int64_t), &ts, sizeof ts);
    r->n++;
    return p + 1;
}

PyDoc_STRVAR(parse_json_run_doc,
"parse_json_run(values, features, allow_extra, max_batch)\n--\n\n"
"Parse a run of JSON reading messages (bytes, each one reading object or a list of them)\n"
"into (assets, ts, values, counts): one str per reading, int64 and float32 [n, len(features)]\n"
"native-endian bytearrays, and the readings per message if any message is a list (else\n"
"None). Returns None where the run is not provably valid JSON of well-formed readings.");

static PyObject *
parse_json_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *messages = NULL, *counts_list = NULL, *result = NULL;
    PyObject *features;
    Py_ssize_t *counts = NULL;
    Py_ssize_t n_msgs, max_batch, i, j;
    size_t table_size;
    int allow_extra, any_list = 0;
    Run r;

    memset(&r, 0, sizeof r);
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "parse_json_run() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    features = args[1];
    if (!PyTuple_Check(features) || PyTuple_GET_SIZE(features) == 0) {
        PyErr_SetString(PyExc_TypeError, "parse_json_run(): features must be a non-empty tuple");
        return NULL;
    }
    if ((allow_extra = PyObject_IsTrue(args[2])) < 0)
        return NULL;
    if ((max_batch = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    if ((messages = PySequence_Tuple(args[0])) == NULL) /* a snapshot we own */
        return NULL;
    n_msgs = PyTuple_GET_SIZE(messages);

    r.nf = PyTuple_GET_SIZE(features);
    r.allow_extra = allow_extra;
    if (r.nf > 0x7FFFFFFE) {
        PyErr_SetString(PyExc_ValueError, "parse_json_run(): too many features");
        goto done;
    }
    for (table_size = 2; table_size < 2 * (size_t)r.nf; table_size *= 2)
        ;
    r.mask = table_size - 1;
    r.names = PyMem_Calloc((size_t)r.nf, sizeof *r.names);
    r.name_len = PyMem_Calloc((size_t)r.nf, sizeof *r.name_len);
    r.stamp = PyMem_Calloc((size_t)r.nf, sizeof *r.stamp);
    r.table = PyMem_Calloc(table_size, sizeof *r.table);
    counts = PyMem_Calloc(n_msgs ? (size_t)n_msgs : 1, sizeof *counts);
    if (!r.names || !r.name_len || !r.stamp || !r.table || !counts) {
        PyErr_NoMemory();
        goto done;
    }
    for (j = 0; j < r.nf; j++) {
        PyObject *name = PyTuple_GET_ITEM(features, j);
        size_t slot;
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "parse_json_run(): features must be str");
            goto done;
        }
        if ((r.names[j] = PyUnicode_AsUTF8AndSize(name, &r.name_len[j])) == NULL) {
            PyErr_Clear(); /* a lone surrogate: no JSON key can name it without an escape */
            goto not_provable;
        }
        if (feature_index(&r, (cur_t)r.names[j], r.name_len[j], r.nf) >= 0) {
            PyErr_SetString(PyExc_ValueError, "parse_json_run(): duplicate features");
            goto done;
        }
        for (slot = fnv1a((cur_t)r.names[j], r.name_len[j]) & r.mask; r.table[slot];
             slot = (slot + 1) & r.mask)
            ;
        r.table[slot] = (int32_t)(j + 1);
    }

    r.capacity = n_msgs ? n_msgs : 1; /* exact when every message is a single reading */
    if (r.capacity > PY_SSIZE_T_MAX / 8 / (Py_ssize_t)sizeof(float) / r.nf) {
        PyErr_NoMemory();
        goto done;
    }
    r.assets = PyList_New(0);
    r.ts = PyByteArray_FromStringAndSize(NULL, r.capacity * (Py_ssize_t)sizeof(int64_t));
    r.values = PyByteArray_FromStringAndSize(NULL, r.capacity * r.nf * (Py_ssize_t)sizeof(float));
    if (!r.assets || !r.ts || !r.values)
        goto done;

    for (i = 0; i < n_msgs; i++) {
        PyObject *item = PyTuple_GET_ITEM(messages, i);
        cur_t p, end;
        Py_ssize_t count = 0;
        if (!PyBytes_CheckExact(item)) /* the bytes' trailing NUL is what stops every scan */
            goto not_provable;
        p = (cur_t)PyBytes_AS_STRING(item);
        end = p + PyBytes_GET_SIZE(item);
        if (*p == '{') {
            p = parse_reading(&r, p, 1);
            count = 1;
        }
        else if (*p == '[') {
            any_list = 1;
            p = skip_ws(p + 1);
            if (*p == ']')
                p++;
            else
                for (;;) {
                    if (*p != '{' || ++count > max_batch)
                        goto not_provable;
                    if ((p = parse_reading(&r, p, 2)) == NULL)
                        break;
                    p = skip_ws(p);
                    if (*p == ']') {
                        p++;
                        break;
                    }
                    if (*p != ',')
                        goto not_provable;
                    p = skip_ws(p + 1);
                }
        }
        else
            goto not_provable;
        if (p == NULL) {
            if (PyErr_Occurred())
                goto done;
            goto not_provable;
        }
        if (skip_ws(p) != end) /* trailing bytes, or a NUL inside the message */
            goto not_provable;
        counts[i] = count;
    }

    if (PyByteArray_Resize(r.ts, r.n * (Py_ssize_t)sizeof(int64_t)) < 0 ||
        PyByteArray_Resize(r.values, r.n * r.nf * (Py_ssize_t)sizeof(float)) < 0)
        goto done;
    if (any_list) {
        if ((counts_list = PyList_New(n_msgs)) == NULL)
            goto done;
        for (i = 0; i < n_msgs; i++) {
            PyObject *count = PyLong_FromSsize_t(counts[i]);
            if (count == NULL)
                goto done;
            PyList_SET_ITEM(counts_list, i, count);
        }
    }
    result = PyTuple_Pack(4, r.assets, r.ts, r.values, any_list ? counts_list : Py_None);
    goto done;

not_provable:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(messages);
    Py_XDECREF(counts_list);
    Py_XDECREF(r.assets);
    Py_XDECREF(r.ts);
    Py_XDECREF(r.values);
    PyMem_Free(r.names);
    PyMem_Free(r.name_len);
    PyMem_Free(r.stamp);
    PyMem_Free(r.table);
    PyMem_Free(counts);
    return result;
}

/* -- message_runs ------------------------------------------------------------------------ */

PyDoc_STRVAR(message_runs_doc,
"message_runs(values, max_bytes, binary)\n--\n\n"
"Maximal runs of messages of one kind, as a list of (kind, start, end): kind 1 for JSON\n"
"(bytes of at most max_bytes starting with '{' or '['), 2 for binary (starting with the\n"
"magic b'PWR', if binary is true) and 0 for anything else (monitor/records.py,\n"
"Decoder.decode_many).");

static PyObject *
message_runs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq, *runs = NULL;
    Py_ssize_t max_bytes, n, i, start = 0;
    int binary, kind = -1;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "message_runs() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if ((max_bytes = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if ((binary = PyObject_IsTrue(args[2])) < 0)
        return NULL;
    if (!(seq = PySequence_Fast(args[0], "message_runs(): values must be a sequence")))
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    if (!(runs = PyList_New(0)))
        goto done;
    for (i = 0; i <= n; i++) {
        int k = -1;
        if (i < n) {
            PyObject *v = PySequence_Fast_GET_ITEM(seq, i);
            k = 0;
            if (PyBytes_CheckExact(v) && PyBytes_GET_SIZE(v) <= max_bytes) {
                const char *p = PyBytes_AS_STRING(v);
                Py_ssize_t size = PyBytes_GET_SIZE(v);
                if (size >= 1 && (p[0] == '{' || p[0] == '['))
                    k = 1;
                else if (binary && size >= 3 && memcmp(p, "PWR", 3) == 0)
                    k = 2;
            }
        }
        if (k != kind) {
            if (i > 0) {
                PyObject *run = Py_BuildValue("(inn)", kind, start, i);
                if (run == NULL || PyList_Append(runs, run) < 0) {
                    Py_XDECREF(run);
                    Py_CLEAR(runs);
                    goto done;
                }
                Py_DECREF(run);
            }
            kind = k;
            start = i;
        }
    }
done:
    Py_DECREF(seq);
    return runs;
}

/* -- parse_binary_run -------------------------------------------------------------------- */

PyDoc_STRVAR(parse_binary_run_doc,
"parse_binary_run(values, n_features, fingerprint, max_batch, max_asset_bytes, max_bytes,\n"
"                 ts_min, ts_max)\n--\n\n"
"The readings of a run of binary messages (format version 1, see monitor/records.py): the\n"
"asset of each message, the asset of each reading, int64 timestamps and float32 rows [n, F]\n"
"as native byte arrays, and readings per message; or None if any message is not provably\n"
"valid (the caller then decodes message by message, which names every rejection). Keys and\n"
"the asset rules are the caller's to check.");

#define BIN_HEADER 16
#define BIN_VERSION 1

static uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static PyObject *
parse_binary_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq = NULL, *msg_assets = NULL, *assets = NULL, *ts_out = NULL, *val_out = NULL;
    PyObject *counts = NULL, *result = NULL;
    Py_ssize_t nf, max_batch, max_asset, max_bytes, n_msgs, m, k = 0, total = 0;
    long long fingerprint, ts_min, ts_max;

    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "parse_binary_run() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
#if !PY_LITTLE_ENDIAN
    Py_RETURN_NONE; /* the format is little-endian: the Python path reads it anywhere */
#endif
#define INT_ARG(var, conv, k)                                                                  \
    if ((var = conv(args[k])) == -1 && PyErr_Occurred())                                       \
        return NULL;
    INT_ARG(nf, PyLong_AsSsize_t, 1)
    INT_ARG(fingerprint, PyLong_AsLongLong, 2)
    INT_ARG(max_batch, PyLong_AsSsize_t, 3)
    INT_ARG(max_asset, PyLong_AsSsize_t, 4)
    INT_ARG(max_bytes, PyLong_AsSsize_t, 5)
    INT_ARG(ts_min, PyLong_AsLongLong, 6)
    INT_ARG(ts_max, PyLong_AsLongLong, 7)
#undef INT_ARG
    if (nf < 1) {
        PyErr_SetString(PyExc_ValueError, "parse_binary_run(): n_features must be >= 1");
        return NULL;
    }
    if (!(seq = PySequence_Fast(args[0], "parse_binary_run(): values must be a sequence")))
        return NULL;
    n_msgs = PySequence_Fast_GET_SIZE(seq);

    /* Pass 1: framing of every message, nothing allocated from what a header says. */
    for (m = 0; m < n_msgs; m++) {
        PyObject *v = PySequence_Fast_GET_ITEM(seq, m);
        const unsigned char *p;
        Py_ssize_t size, alen, data_at, j;
        uint32_t n;
        if (!PyBytes_CheckExact(v))
            goto not_provable;
        size = PyBytes_GET_SIZE(v);
        p = (const unsigned char *)PyBytes_AS_STRING(v);
        if (size > max_bytes || size < BIN_HEADER || memcmp(p, "PWR", 3) != 0 ||
            p[3] != BIN_VERSION || (long long)le32(p + 4) != fingerprint)
            goto not_provable;
        n = le32(p + 8);
        if ((Py_ssize_t)(p[12] | p[13] << 8) != nf || (Py_ssize_t)n > max_batch)
            goto not_provable;
        alen = p[14] | p[15] << 8;
        if (alen > max_asset)
            goto not_provable;
        data_at = BIN_HEADER + alen;
        data_at += (8 - data_at % 8) % 8;
        /* n <= max_batch and size <= max_bytes: no overflow in 64 bits */
        if ((long long)size != (long long)data_at + (long long)n * (8 + 4 * (long long)nf))
            goto not_provable;
        for (j = BIN_HEADER + alen; j < data_at; j++)
            if (p[j] != 0)
                goto not_provable;
        total += (Py_ssize_t)n;
    }

    /* Pass 2: assets, timestamps and values, each checked as decode() does. */
    if (!(msg_assets = PyList_New(n_msgs)) || !(assets = PyList_New(total)) ||
        !(counts = PyList_New(n_msgs)) ||
        !(ts_out = PyByteArray_FromStringAndSize(NULL, total * 8)) ||
        !(val_out = PyByteArray_FromStringAndSize(NULL, total * nf * 4)))
        goto done;
    {
        int64_t *ts = (int64_t *)PyByteArray_AS_STRING(ts_out);
        float *vals = (float *)PyByteArray_AS_STRING(val_out);
        for (m = 0; m < n_msgs; m++) {
            PyObject *v = PySequence_Fast_GET_ITEM(seq, m), *asset, *count;
            const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(v);
            Py_ssize_t n = (Py_ssize_t)le32(p + 8), alen = p[14] | p[15] << 8, data_at, j;
            data_at = BIN_HEADER + alen;
            data_at += (8 - data_at % 8) % 8;
            asset = PyUnicode_DecodeUTF8((const char *)p + BIN_HEADER, alen, "strict");
            if (asset == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                    goto done;
                PyErr_Clear();
                goto not_provable;
            }
            PyList_SET_ITEM(msg_assets, m, asset);
            if (!(count = PyLong_FromSsize_t(n)))
                goto done;
            PyList_SET_ITEM(counts, m, count);
            memcpy(ts + k, p + data_at, (size_t)n * 8);
            memcpy(vals + (size_t)k * (size_t)nf, p + data_at + 8 * n, (size_t)(n * nf) * 4);
            for (j = 0; j < n; j++) {
                int64_t t = ts[k + j];
                if (t < ts_min || t > ts_max || (j && t <= ts[k + j - 1]))
                    goto not_provable;
                PyList_SET_ITEM(assets, k + j, Py_NewRef(asset));
            }
            for (j = 0; j < n * nf; j++)
                if (!isfinite(vals[(size_t)k * (size_t)nf + (size_t)j]))
                    goto not_provable;
            k += n;
        }
    }
    result = PyTuple_Pack(5, msg_assets, assets, ts_out, val_out, counts);
    goto done;

not_provable:
    result = Py_NewRef(Py_None);
done:
    /* Unfilled list slots are NULL, which list deallocation skips. */
    Py_XDECREF(counts);
    Py_XDECREF(val_out);
    Py_XDECREF(ts_out);
    Py_XDECREF(assets);
    Py_XDECREF(msg_assets);
    Py_DECREF(seq);
    return result;
}

/* -- gather_windows ---------------------------------------------------------------------- */

/* Whether a buffer's struct format is the native type code `code` ("f", "l", ...). */
static int
format_is(const Py_buffer *view, const char *codes)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=')
        f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<')
        f++;
#else
    else if (*f == '>' || *f == '!')
        f++;
#endif
    return f[0] != '\0' && f[1] == '\0' && strchr(codes, f[0]) != NULL;
}

PyDoc_STRVAR(gather_windows_doc,
"gather_windows(seq, starts, length, out)\n--\n\n"
"out[k] = seq[starts[k] : starts[k] + length] for C-contiguous float32 seq [rows, F],\n"
"intp starts [n] and writable C-contiguous float32 out [n, length, F]: one memcpy per\n"
"window, every start checked first (ValueError), the GIL released for large copies.");

static PyObject *
gather_windows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer seq, starts, out;
    Py_ssize_t length, rows, nf, n, k, bad = -1;
    const Py_ssize_t *start;
    const float *src;
    float *dst;
    size_t window;
    PyObject *result = NULL;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "gather_windows() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if ((length = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &seq, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &starts, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&seq);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) <
        0) {
        PyBuffer_Release(&starts);
        PyBuffer_Release(&seq);
        return NULL;
    }
    if (seq.ndim != 2 || seq.itemsize != sizeof(float) || !format_is(&seq, "f") ||
        out.ndim != 3 || out.itemsize != sizeof(float) || !format_is(&out, "f")) {
        PyErr_SetString(PyExc_TypeError,
                        "gather_windows(): seq must be float32 [rows, F], out float32 [n, L, F]");
        goto done;
    }
    if (starts.ndim != 1 || starts.itemsize != sizeof(Py_ssize_t) ||
        !format_is(&starts, "lqn")) {
        PyErr_SetString(PyExc_TypeError, "gather_windows(): starts must be intp [n]");
        goto done;
    }
    rows = seq.shape[0];
    nf = seq.shape[1];
    n = starts.shape[0];
    if (length < 0 || out.shape[0] != n || out.shape[1] != length || out.shape[2] != nf) {
        PyErr_Format(PyExc_ValueError,
                     "gather_windows(): out has shape (%zd, %zd, %zd), expected (%zd, %zd, %zd)",
                     out.shape[0], out.shape[1], out.shape[2], n, length, nf);
        goto done;
    }
    start = (const Py_ssize_t *)starts.buf;
    src = (const float *)seq.buf;
    dst = (float *)out.buf;
    window = (size_t)length * (size_t)nf;
    for (k = 0; k < n; k++) /* all checked before anything is written */
        if (start[k] < 0 || start[k] > rows - length) {
            bad = k;
            break;
        }
    if (bad >= 0) {
        PyErr_Format(PyExc_ValueError,
                     "gather_windows(): start %zd of window %zd is outside [0, %zd]", start[bad],
                     bad, rows - length);
        goto done;
    }
    if (window * sizeof(float) * (size_t)n >= GIL_RELEASE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        for (k = 0; k < n; k++)
            memcpy(dst + (size_t)k * window, src + (size_t)start[k] * (size_t)nf,
                   window * sizeof(float));
        Py_END_ALLOW_THREADS
    }
    else {
        for (k = 0; k < n; k++)
            memcpy(dst + (size_t)k * window, src + (size_t)start[k] * (size_t)nf,
                   window * sizeof(float));
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&seq);
    return result;
}

/* -- append_readings --------------------------------------------------------------------- */

PyDoc_STRVAR(append_readings_doc,
"append_readings(assets, index, ts, values, offsets, slabs, state, pending, ready, slots,\n"
"                gap, stride, max_step, partition, seen_mark, names)\n--\n\n"
"The no-gap core of WindowStore.append_many (monitor/windows.py): readings appended one at a\n"
"time in input order, in one pass. Returns (windows made ready, readings left for the gap\n"
"path): the windows written to pending[k][:count], their reading indices to ready[:count],\n"
"their assets appended to names; -1 if a reading is not after\n"
"its asset's previous one, None if an asset is not in index, -2 if pending has room for\n"
"fewer windows than readings: in these three cases nothing is changed. Assets with a gap (a step above max_step) are left alone: their readings are\n"
"marked in gap for the caller's block path. slots[i] receives reading i's slot.");

#define A_TOUCHED 1
#define A_GAP 2

typedef struct {
    Py_buffer *views;
    Py_ssize_t held;
} buffers_t;

/* The buffer of a C-contiguous ndim-d array of one of the struct codes (itemsize bytes), or
 * NULL with TypeError. Every buffer taken is released by release_all. */
static Py_buffer *
take_array(buffers_t *bs, PyObject *obj, const char *codes, Py_ssize_t itemsize, int ndim,
           int writable, const char *what)
{
    Py_buffer *v = &bs->views[bs->held];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0)
        return NULL;
    bs->held++;
    if (v->ndim != ndim || v->itemsize != itemsize || !format_is(v, codes)) {
        PyErr_Format(PyExc_TypeError,
                     "append_readings(): %s must be a %d-d array of '%s' (%zd bytes each)", what,
                     ndim, codes, itemsize);
        return NULL;
    }
    return v;
}

static void
release_all(buffers_t *bs)
{
    for (Py_ssize_t k = 0; k < bs->held; k++)
        PyBuffer_Release(&bs->views[k]);
    PyMem_Free(bs->views);
}

#define I64 "lq"
#define N_STATE 6 /* count, head, last_ts, phase, part, seen */
#define N_PENDING 5 /* windows, ts, partition, offset, first offset */

static PyObject *
append_readings(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *assets, *index, *slabs, *state, *pending, *names_out, *result = NULL;
    Py_buffer *b, *st[N_STATE], *pd[N_PENDING];
    buffers_t bs = {NULL, 0};
    float **slab_vals = NULL;
    int64_t **slab_offs = NULL;
    Py_ssize_t *slots, *ready, n, nf, n_slabs, size = 0, length = 0, n_state, i, k;
    Py_ssize_t stride, room, done = 0, n_ready = 0, n_gap = 0;
    long long max_step, partition, seen_mark;
    const int64_t *ts, *offsets;
    const float *values;
    int64_t *count, *head, *last_ts, *phase, *part, *seen, *prev = NULL;
    unsigned char *flags = NULL, *gap;
    int status = 0; /* 1: an unknown asset, 2: a reading not after its asset's previous one */
    PyObject *last_key = NULL;
    Py_ssize_t last_slot = 0;

    if (nargs != 16) {
        PyErr_Format(PyExc_TypeError, "append_readings() takes 16 arguments (%zd given)", nargs);
        return NULL;
    }
    assets = args[0];
    index = args[1];
    slabs = args[5];
    state = args[6];
    pending = args[7];
    names_out = args[15];
    if (!PyList_CheckExact(assets) || !PyDict_Check(index) || !PyList_CheckExact(slabs) ||
        !PyList_CheckExact(names_out) ||
        !PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != N_STATE ||
        !PyTuple_CheckExact(pending) || PyTuple_GET_SIZE(pending) != N_PENDING) {
        PyErr_SetString(PyExc_TypeError,
                        "append_readings(): assets must be a list, index a dict, slabs a list, "
                        "state a 6-tuple, pending a 5-tuple and names a list");
        return NULL;
    }
    if ((stride = PyLong_AsSsize_t(args[11])) == -1 && PyErr_Occurred())
        return NULL;
    if ((max_step = PyLong_AsLongLong(args[12])) == -1 && PyErr_Occurred())
        return NULL;
    if ((partition = PyLong_AsLongLong(args[13])) == -1 && PyErr_Occurred())
        return NULL;
    if ((seen_mark = PyLong_AsLongLong(args[14])) == -1 && PyErr_Occurred())
        return NULL;
    if (stride < 1 || partition < INT32_MIN || partition > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "append_readings(): stride or partition out of range");
        return NULL;
    }
    n = PyList_GET_SIZE(assets);
    n_slabs = PyList_GET_SIZE(slabs);
    bs.views = PyMem_Calloc((size_t)(8 + N_STATE + N_PENDING + 2 * n_slabs), sizeof(Py_buffer));
    slab_vals = PyMem_Calloc((size_t)n_slabs + 1, sizeof(float *));
    slab_offs = PyMem_Calloc((size_t)n_slabs + 1, sizeof(int64_t *));
    if (bs.views == NULL || slab_vals == NULL || slab_offs == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    if (!(b = take_array(&bs, args[3], "f", sizeof(float), 2, 0, "values")))
        goto done;
    values = b->buf;
    nf = b->shape[1];
    if (b->shape[0] != n)
        goto bad_shape;
    if (!(b = take_array(&bs, args[2], I64, 8, 1, 0, "ts")))
        goto done;
    ts = b->buf;
    if (b->shape[0] != n)
        goto bad_shape;
    if (!(b = take_array(&bs, args[4], I64, 8, 1, 0, "offsets")))
        goto done;
    offsets = b->buf;
    if (b->shape[0] != n)
        goto bad_shape;
    for (k = 0; k < n_slabs; k++) {
        PyObject *pair = PyList_GET_ITEM(slabs, k);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "append_readings(): slabs must hold 2-tuples");
            goto done;
        }
        if (!(b = take_array(&bs, PyTuple_GET_ITEM(pair, 0), "f", sizeof(float), 3, 1,
                             "a slab's values")))
            goto done;
        if (k == 0) {
            size = b->shape[0];
            length = b->shape[1] / 2;
        }
        if (b->shape[0] != size || b->shape[1] != 2 * length || b->shape[2] != nf)
            goto bad_shape;
        slab_vals[k] = b->buf;
        if (!(b = take_array(&bs, PyTuple_GET_ITEM(pair, 1), I64, 8, 2, 1, "a slab's offsets")))
            goto done;
        if (b->shape[0] != size || b->shape[1] != length)
            goto bad_shape;
        slab_offs[k] = b->buf;
    }
    n_state = n_slabs * size;
    for (k = 0; k < N_STATE; k++) {
        if (!(st[k] = take_array(&bs, PyTuple_GET_ITEM(state, k), I64, 8, 1, 1, "state")))
            goto done;
        if (st[k]->shape[0] < n_state)
            goto bad_shape;
    }
    count = st[0]->buf;
    head = st[1]->buf;
    last_ts = st[2]->buf;
    phase = st[3]->buf;
    part = st[4]->buf;
    seen = st[5]->buf;
    if (!(pd[0] = take_array(&bs, PyTuple_GET_ITEM(pending, 0), "f", sizeof(float), 3, 1,
                             "pending windows")))
        goto done;
    if (pd[0]->shape[1] != length || pd[0]->shape[2] != nf)
        goto bad_shape;
    room = pd[0]->shape[0];
    for (k = 1; k < N_PENDING; k++) {
        const char *codes = k == 2 ? "i" : I64;
        if (!(pd[k] = take_array(&bs, PyTuple_GET_ITEM(pending, k), codes, k == 2 ? 4 : 8, 1, 1,
                                 "pending")))
            goto done;
        if (pd[k]->shape[0] < room)
            room = pd[k]->shape[0];
    }
    if (!(b = take_array(&bs, args[8], "lqn", sizeof(Py_ssize_t), 1, 1, "ready")))
        goto done;
    ready = b->buf;
    if (b->shape[0] < n)
        goto bad_shape;
    if (!(b = take_array(&bs, args[9], "lqn", sizeof(Py_ssize_t), 1, 1, "slots")))
        goto done;
    slots = b->buf;
    if (b->shape[0] < n)
        goto bad_shape;
    if (!(b = take_array(&bs, args[10], "?", 1, 1, 1, "gap")))
        goto done;
    gap = b->buf;
    if (b->shape[0] < n)
        goto bad_shape;
    if (n == 0) {
        result = PyLong_FromSsize_t(0);
        goto done;
    }
    if (n_slabs == 0) {
        result = Py_NewRef(Py_None); /* every asset is unknown */
        goto done;
    }

    /* Pass 1: look every asset up and check every step, tracking each asset's last timestamp
     * in last_ts (the previous values kept in prev, put back afterwards). */
    prev = PyMem_Malloc((size_t)n * sizeof(int64_t));
    flags = PyMem_Calloc((size_t)n_state, 1);
    if (prev == NULL || flags == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(assets, i), *v;
        Py_ssize_t slot;
        int open = 0;
        if (key == last_key) { /* a batch's readings come in runs of one asset (one str) */
            slot = last_slot;
        }
        else {
            if (!PyUnicode_CheckExact(key)) {
                PyErr_SetString(PyExc_TypeError, "append_readings(): assets must be str");
                break;
            }
            v = PyDict_GetItemWithError(index, key);
            if (v == NULL) {
                if (!PyErr_Occurred())
                    status = 1;
                break;
            }
            slot = PyLong_AsSsize_t(v);
            if (slot < 0 || slot >= n_state) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "append_readings(): slot %zd out of range",
                                 slot);
                break;
            }
            last_key = key;
            last_slot = slot;
        }
        slots[i] = slot;
        if (!(flags[slot] & A_TOUCHED)) {
            flags[slot] |= A_TOUCHED;
            open = count[slot] == 0; /* a fresh run's first reading has no step */
        }
        if (!open) {
            int64_t dt = ts[i] - last_ts[slot];
            if (dt <= 0) {
                status = 2;
                break;
            }
            if (dt > max_step)
                flags[slot] |= A_GAP;
        }
        prev[i] = last_ts[slot];
        last_ts[slot] = ts[i];
        done = i + 1;
    }
    for (i = done - 1; i >= 0; i--)
        last_ts[slots[i]] = prev[i];
    if (PyErr_Occurred())
        goto done;
    if (status) {
        result = status == 1 ? Py_NewRef(Py_None) : PyLong_FromLong(-1);
        goto done;
    }
    if (room < n) { /* checked last: the caller makes room only for readings it will keep */
        result = PyLong_FromLong(-2);
        goto done;
    }

    /* Pass 2: each reading into its asset's ring (twice, at head and head + L), and each
     * window it completes copied out in one piece. Only numpy buffers this call holds are
     * touched, so the GIL is let go for a large batch: a scoring thread back from ONNX Runtime
     * then takes it at once instead of waiting for this copy to end. */
    {
        const size_t row = (size_t)nf, window = (size_t)length * (size_t)nf;
        float *pw = pd[0]->buf;
        int64_t *pts = pd[1]->buf, *poff = pd[3]->buf, *pfirst = pd[4]->buf;
        int32_t *ppart = pd[2]->buf;
        PyThreadState *saved = NULL;
        if ((size_t)n * window * sizeof(float) >= GIL_RELEASE_BYTES)
            saved = PyEval_SaveThread();
        for (i = 0; i < n; i++) {
            const Py_ssize_t slot = slots[i];
            float *rv;
            int64_t *ro, h, c, ph;
            if (flags[slot] & A_GAP) {
                gap[i] = 1;
                n_gap++;
                continue;
            }
            gap[i] = 0;
            rv = slab_vals[slot / size] + (size_t)(slot % size) * 2 * window;
            ro = slab_offs[slot / size] + (size_t)(slot % size) * (size_t)length;
            h = head[slot];
            memcpy(rv + (size_t)h * row, values + (size_t)i * row, row * sizeof(float));
            memcpy(rv + (size_t)(h + length) * row, values + (size_t)i * row,
                   row * sizeof(float));
            ro[h] = offsets[i];
            if (++h == length)
                h = 0;
            head[slot] = h;
            last_ts[slot] = ts[i];
            part[slot] = partition;
            seen[slot] = seen_mark;
            c = count[slot];
            if (c < length)
                count[slot] = ++c;
            ph = phase[slot] + 1;
            if (c < length || ph < stride) {
                phase[slot] = ph < stride ? ph : stride;
                continue;
            }
            phase[slot] = 0;
            /* After the advance, head is the window's oldest reading. */
            memcpy(pw + (size_t)n_ready * window, rv + (size_t)h * row, window * sizeof(float));
            pts[n_ready] = ts[i];
            ppart[n_ready] = (int32_t)partition;
            poff[n_ready] = offsets[i];
            pfirst[n_ready] = ro[h];
            ready[n_ready] = i;
            n_ready++;
        }
        if (saved != NULL)
            PyEval_RestoreThread(saved);
    }
    for (k = 0; k < n_ready; k++)
        if (PyList_Append(names_out, PyList_GET_ITEM(assets, ready[k])) < 0)
            goto done; /* out of memory: the store is then as good as lost anyway */
    result = Py_BuildValue("(nn)", n_ready, n_gap);
    goto done;

bad_shape:
    PyErr_SetString(PyExc_ValueError,
                    "append_readings(): array shapes do not match (values [n, F], ts/offsets "
                    "[n], slabs [size, 2L, F] / [size, L], state [slots], pending [>= n, L, F])");
done:
    PyMem_Free(flags);
    PyMem_Free(prev);
    PyMem_Free(slab_offs);
    PyMem_Free(slab_vals);
    if (bs.views != NULL)
        release_all(&bs);
    return result;
}

/* -- module ------------------------------------------------------------------------------ */

static PyMethodDef speedups_methods[] = {
    {"parse_json_run", (PyCFunction)(void (*)(void))parse_json_run, METH_FASTCALL,
     parse_json_run_doc},
    {"message_runs", (PyCFunction)(void (*)(void))message_runs, METH_FASTCALL,
     message_runs_doc},
    {"parse_binary_run", (PyCFunction)(void (*)(void))parse_binary_run, METH_FASTCALL,
     parse_binary_run_doc},
    {"gather_windows", (PyCFunction)(void (*)(void))gather_windows, METH_FASTCALL,
     gather_windows_doc},
    {"append_readings", (PyCFunction)(void (*)(void))append_readings, METH_FASTCALL,
     append_readings_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "monitor._speedups",
    .m_doc = "Native fast paths of plantwatch (JSON and binary run parsing, window appends and "
             "gathering); optional.",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_tables();
    return PyModule_Create(&speedups_module);
}
